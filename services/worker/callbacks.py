"""Callbacks: ``@task(on_success=..., on_failure=...)`` submit the named task as a new job.

The callback job is built when the outcome is recorded (validated as the API validates a request,
against the spec the workers registered), written in the outcome's own commit under an outbox
entry (``shared/store/attempts.py``), and published by this worker once that commit is done; a
publish that fails, or a crash in between, leaves it to the outbox relay. So a callback is
submitted exactly when its job's outcome is committed, never per retry. A callback whose task no
worker has registered, or whose arguments that task refuses, is not submitted: the job's outcome
stands and its ``callback_error`` says why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from shared.catalog import Catalog
from shared.errors import TaskError
from shared.job import Job, JobStatus
from shared.store.attempts import FinishRequest
from shared.submission.callbacks import SpecSource, callback_fields

log = logging.getLogger(__name__)


class Callbacks:
    """Builds the callback of an outcome into its finish, and publishes it once that is committed."""

    def __init__(
        self,
        catalog: Catalog,
        registry: SpecSource,
        *,
        publish: Callable[[Sequence[Job]], object],
        outbox_sent: Callable[[Sequence[str]], None],
    ) -> None:
        self.catalog = catalog
        self.registry = registry
        self.publish = publish
        self.outbox_sent = outbox_sent

    def unknown(self) -> list[tuple[str, str]]:
        """(task, callback) pairs whose callback task neither this catalog nor any worker has."""
        missing = []
        for spec in self.catalog.specs():
            for callback in (spec.on_success, spec.on_failure):
                if callback is None:
                    continue
                try:
                    self.catalog.get(callback)
                except TaskError:
                    if self.registry.get(callback) is None:
                        missing.append((spec.name, callback))
        return missing

    def warn_unknown(self) -> None:
        for name, callback in self.unknown():
            log.warning("task %s names callback task %r, which no worker has registered", name, callback)

    def fields(
        self, job: Job, status: JobStatus, *, result: Any = None, error: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The ``FinishRequest`` fields of the callback this outcome calls for (none: an empty dict)."""
        try:
            spec = self.catalog.get(job.task).spec
        except TaskError:
            return {}
        return callback_fields(spec, job, status, self.registry, result=result, error=error)

    def committed(self, request: FinishRequest, written: bool | Future[bool]) -> None:
        """After the finish's commit: publish its callback job, then delete its outbox entry."""
        if isinstance(written, Future):
            try:
                written = bool(written.result())
            except Exception:
                return
        if not written or request.callback is None or request.callback_outbox_id is None:
            return
        try:
            self.publish([request.callback])
            self.outbox_sent([request.callback_outbox_id])
        except Exception as exc:
            log.warning("callback job %s left to the outbox relay: %s", request.callback.id, exc)
