"""Prometheus metrics (prefix ``jobrelay_``) and their exposition in multiprocess mode.

Gunicorn and the worker run several processes: each entry point gives every
start a fresh ``PROMETHEUS_MULTIPROC_DIR`` before any child exists, and
marks children dead when they exit.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
)
from prometheus_client.exposition import choose_encoder

from shared.exemplars import ExemplarCollector

PREFIX = "jobrelay_"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Seconds, from a millisecond no-op to hours-long reports.
DURATION_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
    900,
    3600,
    4 * 3600,
)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

_JOB = ("task", "queue")

# -- API -------------------------------------------------------------------
http_requests_total = Counter(PREFIX + "http_requests_total", "HTTP requests answered.", ("method", "route", "status"))
http_request_duration_seconds = Histogram(
    PREFIX + "http_request_duration_seconds",
    "HTTP request latency.",
    ("method", "route"),
    buckets=HTTP_BUCKETS,
)
jobs_submitted_total = Counter(PREFIX + "jobs_submitted_total", "Jobs accepted by the API.", _JOB)
jobs_rejected_total = Counter(PREFIX + "jobs_rejected_total", "Job requests refused.", ("reason",))
jobs_deduplicated_total = Counter(
    PREFIX + "jobs_deduplicated_total", "Submissions answered with a waiting or running unique job.", _JOB
)

# -- worker ----------------------------------------------------------------
jobs_started_total = Counter(PREFIX + "jobs_started_total", "Attempts started.", _JOB)
jobs_succeeded_total = Counter(PREFIX + "jobs_succeeded_total", "Jobs succeeded.", _JOB)
jobs_failed_total = Counter(PREFIX + "jobs_failed_total", "Jobs failed for good.", _JOB)
jobs_retried_total = Counter(PREFIX + "jobs_retried_total", "Attempts failed and scheduled again.", _JOB)
jobs_cancelled_total = Counter(PREFIX + "jobs_cancelled_total", "Jobs cancelled.", _JOB)
jobs_expired_total = Counter(PREFIX + "jobs_expired_total", "Jobs past their max age.", _JOB)
jobs_duplicates_skipped_total = Counter(PREFIX + "jobs_duplicates_skipped_total", "Duplicate deliveries skipped.", _JOB)
#: reason: "concurrency" (waits for a slot) or "rate_limit" (starts later); see services/worker/middleware/flow.py.
jobs_deferred_total = Counter(
    PREFIX + "jobs_deferred_total", "Starts put off by a flow limit.", ("task", "queue", "reason")
)
consumer_restarts_total = Counter(
    PREFIX + "worker_consumer_restarts_total", "Consumer threads found dead and started again.", ("queue",)
)
worker_kills_total = Counter(
    PREFIX + "worker_kills_total",
    "Worker processes their supervisor killed: a job past its hard time limit, or cancelled past its grace.",
    ("reason",),
)
#: ``reason``: ``jobs`` (MAX_JOBS_PER_CHILD) or ``memory`` (MAX_MEMORY_PER_CHILD_MB); ``kind``: ``process`` (a
#: worker process the supervisor starts) or ``isolated`` (a child running ``isolation="process"`` jobs).
worker_recycled_total = Counter(
    PREFIX + "worker_recycled_total", "Worker processes and isolation children replaced at a limit.", ("reason", "kind")
)
RECYCLE_REASONS = ("jobs", "memory")
RECYCLE_KINDS = ("process", "isolated")
jobs_in_progress = Gauge(PREFIX + "jobs_in_progress", "Attempts running now.", _JOB, multiprocess_mode="livesum")
job_duration_seconds = Histogram(PREFIX + "job_duration_seconds", "Attempt run time.", _JOB, buckets=DURATION_BUCKETS)
job_queue_wait_seconds = Histogram(
    PREFIX + "job_queue_wait_seconds", "Time from due to started.", _JOB, buckets=DURATION_BUCKETS
)


def fresh_multiproc_dir(path: Path) -> Path:
    """Empty ``path`` and point this process (and its future children) at it."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(path.resolve())
    return path


def mark_process_dead(pid: int) -> None:
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)


def exposition(accept: str | None = None) -> tuple[bytes, str]:
    """The metrics text of every process of this service, in OpenMetrics (with the duration buckets'
    exemplars, ``shared/exemplars.py``) when the scrape's ``accept`` header asks for it."""
    encode, content_type = choose_encoder(accept or "")
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        registry = CollectorRegistry()
        registry.register(multiprocess_collector(Path(directory)))
        return encode(registry), content_type
    return encode(DEFAULT_REGISTRY), content_type


def multiprocess_collector(directory: Path) -> ExemplarCollector:
    """Every process's metric files in ``directory``, the duration buckets given their exemplars."""
    return ExemplarCollector(multiprocess.MultiProcessCollector(None, str(directory)), directory)


def start_job_series(tasks: list[tuple[str, str]]) -> None:
    """Create every worker series at 0 for these (task, queue) pairs.

    NOTE: a counter that appears only on its first increment hides that first
    event from rate() and increase(); starting at 0 makes it count.
    """
    for task, queue in tasks:
        for metric in (
            jobs_started_total,
            jobs_succeeded_total,
            jobs_failed_total,
            jobs_retried_total,
            jobs_cancelled_total,
            jobs_expired_total,
            jobs_duplicates_skipped_total,
            jobs_in_progress,
        ):
            metric.labels(task, queue)
    for reason in RECYCLE_REASONS:
        for kind in RECYCLE_KINDS:
            worker_recycled_total.labels(reason, kind)


def start_deferred_series(series: list[tuple[str, str, str]]) -> None:
    """Create ``jobs_deferred_total`` at 0 for these (task, queue, reason) triples (as ``start_job_series``)."""
    for task, queue, reason in series:
        jobs_deferred_total.labels(task, queue, reason)


@dataclass(frozen=True)
class JobSeries:
    """The series a worker writes on every attempt of one (task, queue), looked up once.

    NOTE: each ``labels()`` call takes the metric's lock and builds its key (~0.7 us), and an
    attempt wrote through six of them; the children they return never change.
    """

    queue_wait: Any
    started: Any
    in_progress: Any
    duration: Any
    succeeded: Any


_series: dict[tuple[str, str], JobSeries] = {}


def job_series(task: str, queue: str) -> JobSeries:
    found = _series.get((task, queue))
    if found is None:
        found = _series[(task, queue)] = JobSeries(
            queue_wait=job_queue_wait_seconds.labels(task, queue),
            started=jobs_started_total.labels(task, queue),
            in_progress=jobs_in_progress.labels(task, queue),
            duration=job_duration_seconds.labels(task, queue),
            succeeded=jobs_succeeded_total.labels(task, queue),
        )
    return found


class _Null:
    """Stands in for every metric when metrics are off: each call does nothing."""

    def labels(self, *_: object, **__: object) -> _Null:
        return self

    def inc(self, *_: object) -> None:
        pass

    def dec(self, *_: object) -> None:
        pass

    def set(self, *_: object) -> None:
        pass

    def observe(self, *_: object) -> None:
        pass


def disable() -> None:
    """Turn this process's job metrics into no-ops (``WORKER_METRICS=off``; the benchmark's baseline)."""
    module = globals()
    for name, value in list(module.items()):
        if isinstance(value, Counter | Gauge | Histogram):
            module[name] = _Null()
    _series.clear()
