"""Logging in one format per process setting: JSON lines, or text lines, both with the job and request context.

Every process (API under gunicorn, worker, scheduler) calls ``configure_logging``; gunicorn's own
loggers are routed to the same handler by ``services/api/gunicorn_conf.py``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from shared import tracing

#: Fields every log line carries when they are known.
CONTEXT_FIELDS = ("job_id", "task", "queue", "attempt", "workflow_id", "request_id")
_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("log_context", default=None)


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Attach fields (job_id, task, ...) to every log line written inside the block."""
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def set_log_context(**fields: Any) -> contextvars.Token[dict[str, Any] | None]:
    return _context.set({**(_context.get() or {}), **fields})


def reset_log_context(token: contextvars.Token[dict[str, Any] | None]) -> None:
    _context.reset(token)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_context.get() or {})
        ids = tracing.current_ids()
        if ids is not None:
            line["trace_id"], line["span_id"] = ids
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_text:
            line["exc"] = record.exc_text
        elif record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def log_with_trace(logger: logging.Logger, level: int, trace: str, msg: str, *args: Any) -> None:
    """Log ``msg`` with a traceback already formatted (``trace``), printed where ``exc_info``'s would be.

    NOTE: formatting a traceback reads every frame's source line (a ``stat`` per file); the worker
    formats a failed attempt's once, for the stored error and for this line.
    """
    if not logger.isEnabledFor(level):
        return
    record = logger.makeRecord(logger.name, level, "(unknown file)", 0, msg, args, None)
    record.exc_text = trace.rstrip("\n")
    logger.handle(record)


class TextFormatter(logging.Formatter):
    """``LOG_JSON=off``: one readable line, ending with the same context fields as the JSON lines."""

    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = dict(_context.get() or {})
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                fields[name] = value
        if not fields:
            return text
        head, sep, tail = text.partition("\n")
        context = " ".join(f"{key}={value}" for key, value in fields.items())
        return f"{head} [{context}]{sep}{tail}"


class _AttemptFailureFilter(logging.Filter):
    """Drop Dramatiq's own ERROR with traceback for every failed attempt.

    NOTE: the outcomes middleware logs each attempt's end itself: a retried attempt as one
    WARNING line, the final failure as one ERROR with its traceback. Dramatiq's line would
    repeat the traceback at ERROR for every attempt, retried or not.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith("Failed to process message"))


def configure_logging(service: str, level: str = "INFO", *, json_lines: bool = True) -> None:
    """Route every logger to stderr, as JSON lines unless ``LOG_JSON=off``."""
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(TextFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Dramatiq logs every enqueue at DEBUG; keep it at INFO unless asked.
    quiet = max(logging.getLevelName(level), logging.INFO)
    logging.getLogger("dramatiq").setLevel(quiet)
    worker_thread_log = logging.getLogger("dramatiq.worker.WorkerThread")
    if not any(isinstance(f, _AttemptFailureFilter) for f in worker_thread_log.filters):
        worker_thread_log.addFilter(_AttemptFailureFilter())
    # APScheduler logs every run of every job, Alembic every migration check.
    for chatty in ("apscheduler", "alembic"):
        logging.getLogger(chatty).setLevel(max(logging.getLevelName(level), logging.WARNING))
