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
from typing import TYPE_CHECKING, Any, Protocol, cast

from shared.catalog import Catalog, TaskSpec
from shared.errors import FieldError, TaskError
from shared.ids import new_id
from shared.job import Job, JobStatus
from shared.store.attempts import FinishRequest
from shared.submission.validation import Submission, build_job

if TYPE_CHECKING:
    from shared.store.tasks import TaskRegistry

log = logging.getLogger(__name__)


class SpecSource(Protocol):
    """The tasks the workers registered (``TaskRegistry``), as the API's validation reads them."""

    def get(self, name: str) -> TaskSpec | None: ...

    def queues(self) -> list[str]: ...

    def knows_queue(self, name: str) -> bool: ...


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
        if status is JobStatus.SUCCEEDED:
            name, args = spec.on_success, {"job_id": job.id, "result": result}
        elif status is JobStatus.FAILED:
            shown = {key: value for key, value in (error or {}).items() if key != "traceback"}
            name, args = spec.on_failure, {"job_id": job.id, "error": shown}
        else:
            return {}
        if name is None:
            return {}
        errors: list[FieldError] = []
        try:
            registry = cast("TaskRegistry", self.registry)
            callback = build_job(
                {"task": name, "args": args}, "", registry, Submission(request_id=job.request_id), errors
            )
        except Exception as exc:  # NOTE: the outcome must be recorded whatever the callback's trouble.
            callback, errors = None, [FieldError("/", f"{type(exc).__name__}: {exc}")]
        if callback is None:
            why = "; ".join(f"{e.path} {e.message}".strip() for e in errors)
            log.warning("job %s: its callback %s was not submitted: %s", job.id, name, why)
            return {"callback_error": f"callback {name!r} not submitted: {why}"}
        return {"callback": callback, "callback_outbox_id": new_id()}

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
