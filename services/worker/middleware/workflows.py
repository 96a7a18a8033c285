"""Workflow advance: once a step's status is final, the workflow's next steps are released.

A final status reaches here three ways: the outcome of an attempt run here (this
middleware's hook, unless its commit was deferred to the acker), the acker once a
deferred commit is done, and a claim that found the job already final
(cancelled, expired). If advancing fails, the scheduler's housekeeping retries it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import Middleware

from services.worker.middleware.claims import Claims
from shared.job import Job

log = logging.getLogger(__name__)


class WorkflowAdvance(Middleware):
    """Listed after ``Claims`` and before ``Outcomes``, so its hook sees the recorded outcome."""

    def __init__(self, claims: Claims, advance: Callable[[str], object] | None) -> None:
        self.claims = claims
        #: Moves a workflow on from its committed steps (``WorkflowEngine.advance``).
        self.advance = advance

    def ended(self, job: Job) -> None:
        """Let the workflow of a job whose final status is committed move on."""
        if job.workflow_id is None or self.advance is None:
            return
        try:
            self.advance(job.workflow_id)
        except Exception:
            log.exception("advancing workflow %s failed; housekeeping will retry", job.workflow_id)

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        attempt = self.claims.current(message)
        if attempt is not None and attempt.final and not attempt.ack_deferred:
            self.ended(attempt.job)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        """A delivery whose job was found final at its claim (cancelled, expired)."""
        attempt = self.claims.current(message)
        if attempt is not None and attempt.final:
            self.ended(attempt.job)
