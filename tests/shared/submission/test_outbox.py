"""The background writes of the API's published marks and sent outbox entries."""

from __future__ import annotations

import threading
import time

import pytest

from shared.submission.outbox import BackgroundWrites


def test_background_writes_hand_over_ids_in_batches_and_survive_a_failed_write() -> None:
    written: list[list[str]] = []
    done = threading.Event()

    def write(ids: list[str]) -> None:
        if ids == ["bad"]:
            raise RuntimeError("store down")
        written.append(ids)
        if sum(map(len, written)) == 5:
            done.set()

    writes = BackgroundWrites(write, "test marks", interval_s=0.05, max_batch=3)
    writes.add(["bad"])
    time.sleep(0.2)
    writes.add(["a", "b"])
    writes.add(["c", "d", "e"])
    assert done.wait(5)
    assert [id_ for batch in written for id_ in batch] == ["a", "b", "c", "d", "e"]
    assert max(map(len, written)) <= 3


def test_take_hands_pending_ids_to_a_caller_that_writes_them_itself() -> None:
    writes = BackgroundWrites(lambda ids: pytest.fail("written in the background"), "test", interval_s=10)
    writes.add(["a", "b"])
    assert writes.take() == ["a", "b"]
    assert writes.take() == []
