"""Job metrics: the series every attempt writes (started, running now, queue wait, duration).

Outcome counters (succeeded, retried, failed, cancelled) are counted where the
outcome is decided (``outcomes.py``, ``claims.py``); this middleware times the attempt.
"""

from __future__ import annotations

import time
from typing import Any

from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import Middleware

from services.worker.middleware.claims import Claims
from shared import exemplars, metrics
from shared.job import utcnow


class JobMetrics(Middleware):
    """Listed after ``Claims``: it sees only the deliveries whose claim let them run."""

    def __init__(self, claims: Claims) -> None:
        self.claims = claims
        #: Start of each attempt running here, by job id (perf_counter seconds).
        self._started: dict[str, float] = {}

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        attempt = self.claims.current(message)
        if attempt is None:
            return
        job = attempt.job
        series = metrics.job_series(message.actor_name, message.queue_name)
        if job.attempts == 1:
            due = job.next_attempt_at or job.scheduled_for or job.created_at
            series.queue_wait.observe(max(0.0, (utcnow() - due).total_seconds()))
        series.started.inc()
        series.in_progress.inc()
        self._started[job.id] = time.perf_counter()

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        attempt = self.claims.current(message)
        started = self._started.pop(message.message_id, None) if attempt is not None else None
        if attempt is None or started is None:
            return
        labels = (attempt.job.task, attempt.job.queue)
        series = metrics.job_series(*labels)
        series.in_progress.dec()
        # The consumer span is current here: a sampled attempt is its bucket's exemplar.
        exemplars.observe(metrics.job_duration_seconds, labels, time.perf_counter() - started, series.duration)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        if self._started.pop(message.message_id, None) is not None:
            metrics.job_series(message.actor_name, message.queue_name).in_progress.dec()
