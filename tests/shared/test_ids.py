"""UUIDv7 job ids: well-formed, ordered as text within a process, unique across threads."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from itertools import pairwise
from types import SimpleNamespace

import pytest

import shared.ids
from shared.ids import is_id, new_id


def timestamp_ms(text: str) -> int:
    """The 48-bit Unix millisecond timestamp at the front of a UUIDv7."""
    return uuid.UUID(text).int >> 80


def counter(text: str) -> int:
    """The 12-bit ``rand_a`` field, which holds the per-millisecond counter."""
    return (uuid.UUID(text).int >> 64) & 0xFFF


FAKE_MS = 1_700_000_000_000  # 2023-11-14, a fixed point for a stopped clock


@pytest.fixture
def freeze_clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """Stop the clock ``shared.ids`` (and only it) sees; its counter state is restored afterwards."""
    monkeypatch.setattr(shared.ids, "_last_ms", 0)
    monkeypatch.setattr(shared.ids, "_counter", 0)

    def freeze(ms: int) -> None:
        monkeypatch.setattr(shared.ids, "time", SimpleNamespace(time_ns=lambda: ms * 1_000_000))

    return freeze


def test_new_id_is_a_canonical_uuid_version_7() -> None:
    text = new_id()
    parsed = uuid.UUID(text)

    assert isinstance(text, str)
    assert str(parsed) == text  # lowercase, hyphenated, 36 characters
    assert len(text) == 36
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert text[14] == "7"
    assert text[19] in "89ab"


def test_many_ids_are_all_version_7_rfc_4122() -> None:
    for text in (new_id() for _ in range(1000)):
        parsed = uuid.UUID(text)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122


def test_timestamp_is_the_current_unix_time_in_milliseconds() -> None:
    before_ms = time.time_ns() // 1_000_000

    text = new_id()

    after_ms = time.time_ns() // 1_000_000
    # Earlier bursts may have pushed the id clock a few ms ahead of the wall clock.
    assert before_ms <= timestamp_ms(text) <= after_ms + 20


def test_ten_thousand_ids_strictly_increase_as_text() -> None:
    ids = [new_id() for _ in range(10_000)]

    assert all(earlier < later for earlier, later in pairwise(ids))
    assert len(set(ids)) == len(ids)


def test_text_order_matches_timestamp_order() -> None:
    ids = [new_id() for _ in range(2_000)]

    assert sorted(ids) == ids
    assert sorted(ids, key=lambda text: uuid.UUID(text).int) == ids
    assert [timestamp_ms(text) for text in ids] == sorted(timestamp_ms(text) for text in ids)


def test_ids_stay_ordered_within_one_frozen_millisecond(freeze_clock: Callable[[int], None]) -> None:
    # Given: a clock that does not move
    start_ms = FAKE_MS
    freeze_clock(start_ms)

    # When: more ids are made than the 12-bit counter can hold in one millisecond
    ids = [new_id() for _ in range(6_000)]

    # Then: the counter overflows into the timestamp and order is kept
    assert all(earlier < later for earlier, later in pairwise(ids))
    assert timestamp_ms(ids[0]) == start_ms
    assert timestamp_ms(ids[-1]) > start_ms
    assert all(uuid.UUID(text).version == 7 for text in ids)
    assert counter(ids[0]) <= 0x7FF  # a fresh millisecond starts in the lower half


def test_ids_stay_ordered_when_the_clock_goes_back(freeze_clock: Callable[[int], None]) -> None:
    # Given: ids made at some time
    now_ms = FAKE_MS
    freeze_clock(now_ms)
    before = [new_id() for _ in range(10)]

    # When: the wall clock steps back by a minute
    freeze_clock(now_ms - 60_000)
    after = [new_id() for _ in range(10)]

    # Then: later ids still sort after earlier ones
    ids = before + after
    assert all(earlier < later for earlier, later in pairwise(ids))


def test_ids_made_in_different_milliseconds_use_the_later_timestamp(freeze_clock: Callable[[int], None]) -> None:
    base_ms = FAKE_MS
    freeze_clock(base_ms)
    first = new_id()

    freeze_clock(base_ms + 5)
    second = new_id()

    assert timestamp_ms(first) == base_ms
    assert timestamp_ms(second) == base_ms + 5
    assert first < second


def test_ids_are_unique_across_threads() -> None:
    # Given: several threads released together
    threads_n, per_thread = 4, 2_500
    barrier = threading.Barrier(threads_n)
    results: list[list[str]] = [[] for _ in range(threads_n)]

    def work(index: int) -> None:
        barrier.wait()
        results[index].extend(new_id() for _ in range(per_thread))

    threads = [threading.Thread(target=work, args=(index,)) for index in range(threads_n)]

    # When: each makes ids concurrently
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    # Then: no id repeats and each thread saw its own ids increase
    every = [text for chunk in results for text in chunk]
    assert len(every) == threads_n * per_thread
    assert len(set(every)) == len(every)
    for chunk in results:
        assert all(earlier < later for earlier, later in pairwise(chunk))
    assert all(uuid.UUID(text).version == 7 for text in every)


def test_is_id_accepts_new_ids() -> None:
    for _ in range(100):
        assert is_id(new_id())


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not-an-id",
        "0190a5a4-7c1e-7b3a-9f00-12345678",  # too short
        "0190a5a4-7c1e-7b3a-9f00-1234567890abc",  # too long
        "0190A5A4-7C1E-7B3A-9F00-1234567890AB",  # uppercase
        "0190a5a47c1e7b3a9f001234567890ab",  # no hyphens
        "{0190a5a4-7c1e-7b3a-9f00-1234567890ab}",  # braces
        "urn:uuid:0190a5a4-7c1e-7b3a-9f00-1234567890ab",
        " 0190a5a4-7c1e-7b3a-9f00-1234567890ab",
        "0190a5a4-7c1e-7b3a-9f00-1234567890ab\n",
        "0190a5a4-7c1e-7b3a-9f00-1234567890ag",  # not hex
        "0190a5a47c1e-7b3a-9f00-1234-567890ab",  # hyphens in the wrong places
    ],
)
def test_is_id_refuses_anything_but_the_canonical_form(text: str) -> None:
    assert not is_id(text)


def test_is_id_accepts_the_canonical_form_of_a_hand_written_id() -> None:
    assert is_id("0190a5a4-7c1e-7b3a-9f00-1234567890ab")


def test_is_id_does_not_raise_on_upper_case_of_a_real_id() -> None:
    assert not is_id(new_id().upper())


def test_random_uuid_is_a_canonical_uuid_version_4() -> None:
    texts = {shared.ids.random_uuid() for _ in range(2000)}

    assert len(texts) == 2000
    for text in texts:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def test_random_bytes_spans_pool_refills_without_repeating() -> None:
    # 10-byte draws cross the 4 KiB block boundary many times
    draws = [shared.ids.random_bytes(10) for _ in range(3000)]

    assert all(len(draw) == 10 for draw in draws)
    assert len(set(draws)) == len(draws)
    assert len(shared.ids.random_bytes(10_000)) == 10_000


def test_a_forked_child_draws_other_bytes_than_its_parent() -> None:
    # Given a parent whose pool has bytes read ahead
    shared.ids.random_bytes(1)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next draw and leave at once
        os.write(write, shared.ids.random_bytes(16))
        os._exit(0)
    os.close(write)
    child = os.read(read, 16)
    os.close(read)
    os.waitpid(pid, 0)
    # Then the parent's next draw (what the child would have shared) is not the child's
    assert child != shared.ids.random_bytes(16)
