"""What a running task can reach: its job, ``report_progress`` (and ``_async``), ``result_file``, the settings.

``job_view()`` is the task author's ``jobrelay.current_job()``: a read-only snapshot of the
running job (id, task, queue, attempt, max_retries, deadline, workflow_id, a bound logger);
``JobContext`` is the worker's own mutable record behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO, Protocol

from shared.results import ResultStorage
from shared.settings import Settings


class ProgressSink(Protocol):
    def report_progress(self, job_id: str, progress: dict[str, Any]) -> None: ...


@dataclass
class JobContext:
    job_id: str
    task: str
    attempt: int
    sink: ProgressSink
    results: ResultStorage | None = None
    last_report_s: float = field(default=0.0)
    #: Set once the task has written a result file (its content type).
    result_file_type: str | None = None
    #: What the task returned.
    result: Any = None
    #: Set once the task's function has returned or raised: from then on its thread is in the
    #: worker's hooks, where a cancel must no longer be raised into it.
    returned: bool = False
    queue: str = ""
    max_retries: int = 0
    #: When the attempt's time limit runs out (None: no limit).
    deadline: datetime | None = None
    workflow_id: str | None = None


class JobLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger whose lines carry the job's fields (as ``extra``, so the JSON formatter shows them)."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


@dataclass(frozen=True)
class CurrentJob:
    """The running job as its task sees it (``jobrelay.current_job()``); ``attempt`` is 1 on the first run."""

    id: str
    task: str
    queue: str
    attempt: int
    max_retries: int
    deadline: datetime | None
    workflow_id: str | None
    logger: logging.LoggerAdapter[logging.Logger]


_current: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar("current_job", default=None)

#: Progress writes closer together than this are coalesced (the last one always lands).
MIN_PROGRESS_INTERVAL_S = 0.2


_settings: Settings | None = None
_settings_lock = threading.Lock()


def current_job() -> JobContext | None:
    return _current.get()


def job_view() -> CurrentJob | None:
    """The running job, for its task (``jobrelay.current_job()``); None outside a task."""
    context = _current.get()
    if context is None:
        return None
    fields = {
        "job_id": context.job_id,
        "task": context.task,
        "queue": context.queue,
        "attempt": context.attempt,
        "workflow_id": context.workflow_id,
    }
    return CurrentJob(
        id=context.job_id,
        task=context.task,
        queue=context.queue,
        attempt=context.attempt,
        max_retries=context.max_retries,
        deadline=context.deadline,
        workflow_id=context.workflow_id,
        logger=JobLogger(logging.getLogger(f"jobrelay.task.{context.task}"), fields),
    )


def use_settings(settings: Settings | None) -> None:
    """Give the tasks of this process ``settings``: the worker calls this once, at start (None forgets them)."""
    global _settings
    with _settings_lock:
        _settings = settings


def current_settings() -> Settings:
    """The settings the worker parsed at start (``SMTP_URL``, ``REPORTS_DATABASE_URL``, ...), for tasks.

    A task function called outside a worker (a script, a shell) gets them parsed from
    the environment on first use, once, as the worker would have.
    """
    global _settings
    with _settings_lock:
        if _settings is None:
            _settings = Settings.from_env()
        return _settings


def enter_job(context: JobContext) -> contextvars.Token[JobContext | None]:
    return _current.set(context)


def leave_job(token: contextvars.Token[JobContext | None]) -> None:
    _current.reset(token)


def report_progress(current: float, total: float | None = None, message: str | None = None) -> None:
    """Record the running job's progress; visible through the API within a second.

    Calls closer together than ``MIN_PROGRESS_INTERVAL_S`` are dropped unless
    they report completion, so a tight loop can call this freely. The write
    blocks its caller: an ``async def`` task awaits ``report_progress_async``.
    """
    context = _current.get()
    progress = _due(context, current, total, message)
    if context is not None and progress is not None:
        context.sink.report_progress(context.job_id, progress)


async def report_progress_async(current: float, total: float | None = None, message: str | None = None) -> None:
    """``report_progress`` for ``async def`` tasks: the store write runs in a thread meanwhile.

    NOTE: awaited, not fired and forgotten: the writes of one job land in order, the last one
    before the job's outcome (a write after it is ignored), and a failed write raises here.
    """
    context = _current.get()
    progress = _due(context, current, total, message)
    if context is not None and progress is not None:
        await asyncio.to_thread(context.sink.report_progress, context.job_id, progress)


def _due(context: JobContext | None, current: float, total: float | None, message: str | None) -> dict[str, Any] | None:
    """The progress to write now, or None: outside a job, or too soon after the last write."""
    if context is None:
        return None
    now = time.monotonic()
    done = total is not None and current >= total
    if not done and now - context.last_report_s < MIN_PROGRESS_INTERVAL_S:
        return None
    context.last_report_s = now
    return {"current": current, "total": total, "message": message}


@contextlib.contextmanager
def result_file(content_type: str) -> Iterator[BinaryIO]:
    """Stream the job's result body (a CSV, a PDF, an export) into result storage.

    The file appears only when the block ends without error (a temporary file
    renamed, or an upload to S3 when the block ends), and the job's
    ``result_url`` points at it.
    What the task returns stays in the row as its JSON result.
    The writes block their caller: an ``async def`` task with much to write (or an upload
    to S3 at the block's end) writes in a thread, ``await asyncio.to_thread(write, ...)``,
    where the job is visible too.
    """
    context = _current.get()
    if context is None or context.results is None:
        raise RuntimeError("result_file() is only available inside a running task")
    with context.results.writer(context.job_id, content_type) as handle:
        yield handle
    context.result_file_type = content_type
