"""Recycling's decisions: limits, the resident memory read, and the middleware that stops a worker process."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

from services.worker.recycling import MIB, ProcessRecycling, RecycleLimits, rss_bytes
from shared import metrics


def test_limits_name_the_first_one_reached_and_zero_turns_each_off() -> None:
    def rss() -> int:
        return 200 * MIB

    assert RecycleLimits().reason(10**6, rss) is None
    assert RecycleLimits(max_jobs=3).reason(2, rss) is None
    assert RecycleLimits(max_jobs=3).reason(3, rss) == "jobs"
    assert RecycleLimits(max_memory_mb=200).reason(1, rss) is None
    assert RecycleLimits(max_memory_mb=199).reason(1, rss) == "memory"
    assert RecycleLimits(max_jobs=1, max_memory_mb=1).reason(1, rss) == "jobs"
    # An unreadable size never recycles
    assert RecycleLimits(max_memory_mb=1).reason(1, lambda: None) is None


def test_memory_is_only_read_when_its_limit_is_on() -> None:
    def unread() -> int:
        raise AssertionError("read")

    assert RecycleLimits(max_jobs=5).reason(1, unread) is None


def test_rss_reads_this_process_and_others_and_none_for_the_gone() -> None:
    own = rss_bytes()
    assert own is not None and 10 * MIB < own < 4096 * MIB
    assert rss_bytes(os.getpid()) is not None
    assert rss_bytes(2**22 + 12345) is None


@dataclass
class _Message:
    message_id: str


class _Claims:
    """Answers ``current`` as ``Claims`` does: the attempt of a message whose claim let it run."""

    def __init__(self, ran: set[str]) -> None:
        self.ran = ran

    def current(self, message: _Message) -> Any:
        return object() if message.message_id in self.ran else None


class _Thread:
    stopped = False

    def stop(self) -> None:
        self.stopped = True


@dataclass
class _Worker:
    workers: list[_Thread]


def recycled(reason: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("jobrelay_worker_recycled_total", {"reason": reason, "kind": "process"}) or 0.0


def test_a_process_at_its_job_limit_stops_its_threads_and_asks_to_stop_once() -> None:
    # Given a process of two threads allowed three jobs, one delivery of which was skipped
    stop = threading.Event()
    middleware = ProcessRecycling(_Claims({"a", "b", "c", "d"}), RecycleLimits(max_jobs=3), stop=stop)  # type: ignore[arg-type]
    worker = _Worker([_Thread(), _Thread()])
    middleware.after_worker_boot(None, worker)  # type: ignore[arg-type]
    before = recycled("jobs")
    # When its attempts end
    for job_id in ("a", "skipped", "b"):
        middleware.after_process_message(None, _Message(job_id))  # type: ignore[arg-type]
    assert not stop.is_set() and middleware.reason is None
    middleware.after_process_message(None, _Message("c"))  # type: ignore[arg-type]
    # Then the third ran one recycles it: threads told to take no more, the stop asked, counted once
    assert stop.is_set() and middleware.reason == "jobs"
    assert all(thread.stopped for thread in worker.workers)
    middleware.after_process_message(None, _Message("d"))  # type: ignore[arg-type]
    assert recycled("jobs") == before + 1


def test_a_process_over_its_memory_limit_is_recycled() -> None:
    stop = threading.Event()
    sizes = iter([100 * MIB, 300 * MIB])
    middleware = ProcessRecycling(
        _Claims({"a", "b"}),  # type: ignore[arg-type]
        RecycleLimits(max_memory_mb=256),
        stop=stop,
        rss=lambda: next(sizes),
    )
    middleware.after_process_message(None, _Message("a"))  # type: ignore[arg-type]
    assert not stop.is_set()
    middleware.after_process_message(None, _Message("b"))  # type: ignore[arg-type]
    assert stop.is_set() and middleware.reason == "memory"


def test_the_recycle_series_start_at_zero() -> None:
    metrics.start_job_series([])
    for reason in metrics.RECYCLE_REASONS:
        for kind in metrics.RECYCLE_KINDS:
            assert metrics.worker_recycled_total.labels(reason, kind)._value.get() >= 0
