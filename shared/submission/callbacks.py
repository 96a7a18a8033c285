"""The callback job an outcome calls for (``@task(on_success=..., on_failure=...)``), built as the API builds a job.

Shared by the worker (an attempt's outcome, ``services/worker/callbacks.py``) and the crash recovery
(an attempt lost with its process, ``shared/broker/orphans.py``): both put the fields returned here
into the outcome's ``FinishRequest``, so the callback's row and outbox entry are written in the
outcome's own commit.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol, cast

from shared.catalog import TaskSpec
from shared.errors import FieldError
from shared.ids import new_id
from shared.job import Job, JobStatus
from shared.submission.validation import Submission, build_job

if TYPE_CHECKING:
    from shared.store.tasks import TaskRegistry

log = logging.getLogger(__name__)


class SpecSource(Protocol):
    """The tasks the workers registered (``TaskRegistry``), as the API's validation reads them."""

    def get(self, name: str) -> TaskSpec | None: ...

    def queues(self) -> list[str]: ...

    def knows_queue(self, name: str) -> bool: ...


def callback_fields(
    spec: TaskSpec | None,
    job: Job,
    status: JobStatus,
    registry: SpecSource,
    *,
    result: Any = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``callback`` and ``callback_outbox_id``, or ``callback_error``, for ``FinishRequest``; {} when none is due.

    Only a success (``on_success``, args ``{"job_id", "result"}``) or a failure for good (``on_failure``,
    args ``{"job_id", "error"}``, the error as the API shows it) has one.
    """
    if spec is None:
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
        body = {"task": name, "args": args}
        callback = build_job(body, "", cast("TaskRegistry", registry), Submission(request_id=job.request_id), errors)
    except Exception as exc:  # NOTE: the outcome must be recorded whatever the callback's trouble.
        callback, errors = None, [FieldError("/", f"{type(exc).__name__}: {exc}")]
    if callback is None:
        why = "; ".join(f"{e.path} {e.message}".strip() for e in errors)
        log.warning("job %s: its callback %s was not submitted: %s", job.id, name, why)
        return {"callback_error": f"callback {name!r} not submitted: {why}"}
    return {"callback": callback, "callback_outbox_id": new_id()}
