"""What a running task can reach: its job id and ``report_progress``."""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass, field
from typing import Any, Protocol


class ProgressSink(Protocol):
    def report_progress(self, job_id: str, progress: dict[str, Any]) -> None: ...


@dataclass
class JobContext:
    job_id: str
    task: str
    attempt: int
    sink: ProgressSink
    last_report_s: float = field(default=0.0)


_current: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar("current_job", default=None)

#: Progress writes closer together than this are coalesced (the last one always lands).
MIN_PROGRESS_INTERVAL_S = 0.2


def current_job() -> JobContext | None:
    return _current.get()


def enter_job(context: JobContext) -> contextvars.Token[JobContext | None]:
    return _current.set(context)


def leave_job(token: contextvars.Token[JobContext | None]) -> None:
    _current.reset(token)


def report_progress(current: float, total: float | None = None, message: str | None = None) -> None:
    """Record the running job's progress; visible through the API within a second.

    Calls closer together than ``MIN_PROGRESS_INTERVAL_S`` are dropped unless
    they report completion, so a tight loop can call this freely.
    """
    context = _current.get()
    if context is None:
        return
    now = time.monotonic()
    done = total is not None and current >= total
    if not done and now - context.last_report_s < MIN_PROGRESS_INTERVAL_S:
        return
    context.last_report_s = now
    context.sink.report_progress(context.job_id, {"current": current, "total": total, "message": message})
