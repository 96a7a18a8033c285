"""Callbacks: ``@task(on_success=..., on_failure=...)`` submit the named task as a new job.

The callback job is built when the outcome is recorded (validated as the API validates a request,
against the spec the workers registered), written in the outcome's own commit under an outbox
entry (``shared/store/attempts.py``), and published by this worker once that commit is done; a
publish that fails, or a crash in between, leaves it to the outbox relay. So a callback is
submitted exactly when its job's outcome is committed, never per retry. A callback whose task no
worker has registered, or whose arguments that task refuses, is not submitted: the job's outcome
stands and its ``callback_error`` says why. A job failed outside an attempt (its message
dead-lettered undelivered, or its outcome refused by the store) gets its on_failure callback too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from shared.catalog import Catalog, TaskSpec
from shared.errors import TaskError
from shared.job import Job, JobStatus
from shared.store.attempts import FinishRequest
from shared.store.protocol import JobStoreProtocol
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
        """The ``FinishRequest`` fields of the callback this outcome calls for (none: an empty dict).

        The task's spec is this worker's, else the one another worker registered (a message whose
        actor this worker lacks is dead-lettered here, and its on_failure still falls due).
        """
        try:
            spec: TaskSpec | None = self.catalog.get(job.task).spec
        except TaskError:
            spec = self.registry.get(job.task)
        return callback_fields(spec, job, status, self.registry, result=result, error=error)

    def failure_fields(self, store: JobStoreProtocol, job_id: str, error: dict[str, Any]) -> dict[str, Any]:
        """The callback fields of failing ``job_id`` for good outside an attempt (its row read first)."""
        try:
            return self.fields(store.get(job_id), JobStatus.FAILED, error=error)
        except Exception as exc:  # NOTE: the failure must be recorded whatever the callback's trouble.
            log.warning("job %s: its on_failure callback could not be built: %s", job_id, exc)
            return {}

    def fail_undelivered(self, store: JobStoreProtocol, job_id: str, error: dict[str, Any]) -> bool:
        """``store.fail_undelivered`` with the job's on_failure callback in the same commit, then published."""
        fields = self.failure_fields(store, job_id, error)
        failed = store.fail_undelivered(job_id, error, **fields)
        if failed and "callback" in fields:
            self.published(fields["callback"], fields["callback_outbox_id"])
        return failed

    def committed(self, request: FinishRequest, written: bool | Future[bool]) -> None:
        """After the finish's commit: publish its callback job, then delete its outbox entry."""
        if isinstance(written, Future):
            try:
                written = bool(written.result())
            except Exception:
                return
        if written and request.callback is not None and request.callback_outbox_id is not None:
            self.published(request.callback, request.callback_outbox_id)

    def published(self, callback: Job, outbox_id: str) -> None:
        """Publish a committed callback job and delete its outbox entry (else the relay will)."""
        try:
            self.publish([callback])
            self.outbox_sent([outbox_id])
        except Exception as exc:
            log.warning("callback job %s left to the outbox relay: %s", callback.id, exc)


def fail_undelivered(store: JobStoreProtocol, callbacks: Callbacks | None, job_id: str, error: dict[str, Any]) -> bool:
    """Fail for good a job whose message could not be run, submitting its on_failure callback if any."""
    if callbacks is None:
        return store.fail_undelivered(job_id, error)
    return callbacks.fail_undelivered(store, job_id, error)
