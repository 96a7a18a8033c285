"""Tracing: a worker's spans of a job join the trace its message carries (``shared/tracing.py``).

``TraceMessages`` (first in the chain) opens the ``process <queue>`` consumer span, a child of the
publish span whose W3C ``traceparent`` rides in the message's options, and ends it after every
other hook (the claim, the result's storage, the outcome's record and the workflow's advance are
its children). ``TraceRun`` (last in the chain) opens the ``run <task>`` span around the task
itself, so the calls the task makes (redis, SQLAlchemy, outbound HTTP, when their
instrumentations are installed) nest under it.

A retry is a new message copied from this one's options (``outcomes.py``): the consumer span
writes its own traceparent into the options, so the next attempt's span links to this one.

Both are added to the chain only when tracing is on.
"""

from __future__ import annotations

import threading
from typing import Any

from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import Middleware

from services.worker.middleware.claims import Claims
from shared import tracing


class TraceMessages(Middleware):
    """The consumer span of every delivery this process takes, whatever becomes of it."""

    def __init__(self) -> None:
        # NOTE: Dramatiq runs a message's before and after hooks on the thread that runs it.
        self._local = threading.local()

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        options = message.options
        self._local.span = tracing.start(
            f"process {message.queue_name}",
            kind="consumer",
            attributes=tracing.messaging_attributes(
                "process",
                queue=message.queue_name,
                job_id=message.message_id,
                task=message.actor_name,
            ),
            parent=options.get(tracing.TRACEPARENT),
            links=[options.get(tracing.PREVIOUS_ATTEMPT)],
        )
        # The retry's message copies these options: its span links to this attempt's.
        own = tracing.traceparent_of(self._local.span)
        if own is not None:
            options[tracing.PREVIOUS_ATTEMPT] = own

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        # NOTE: the claim's hooks ran before this one (Dramatiq runs after hooks in reverse): the attempt's
        # number was set on this span by ``TraceRun`` while the job was claimed.
        tracing.finish(self._take(), exception)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        started = self._take()
        if started is not None:
            # A duplicate delivery, a job cancelled or expired at its claim, one a flow limit put off.
            started[0].set_attribute("jobrelay.skipped", True)
            tracing.finish(started)

    def _take(self) -> Any:
        started = getattr(self._local, "span", None)
        self._local.span = None
        return started


class TraceRun(Middleware):
    """The span of the task's own run, between the last before hook and the first after hook."""

    def __init__(self, claims: Claims) -> None:
        self.claims = claims
        self._local = threading.local()

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        attempt = self.claims.current(message)
        attributes: dict[str, Any] = {"jobrelay.task": message.actor_name}
        if attempt is not None:
            attributes["jobrelay.attempt"] = attempt.job.attempts
            if attempt.job.workflow_id:
                attributes["jobrelay.workflow_id"] = attempt.job.workflow_id
            # The consumer span (``TraceMessages``'), current here, learns what the claim found.
            tracing.annotate(attributes)
        self._local.span = tracing.start(f"run {message.actor_name}", attributes=attributes)

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        started = getattr(self._local, "span", None)
        self._local.span = None
        tracing.finish(started, exception)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        started = getattr(self._local, "span", None)
        self._local.span = None
        tracing.finish(started)
