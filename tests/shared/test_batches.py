"""The group-commit loop step: one waiting take, then what is already queued (pure logic)."""

from __future__ import annotations

import queue

from shared.batches import take_batch


def test_takes_what_is_queued_up_to_the_limit() -> None:
    source: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    for n in range(5):
        source.put(n)
    assert take_batch(source, 3) == ([0, 1, 2], False)
    assert take_batch(source, 3) == ([3, 4], False)


def test_a_none_ends_the_batch_and_asks_to_stop() -> None:
    source: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    for item in (1, 2, None, 3):
        source.put(item)
    assert take_batch(source, 10) == ([1, 2], True)
    assert take_batch(source, 10) == ([3], False)
    source.put(None)
    assert take_batch(source, 10) == ([], True)
