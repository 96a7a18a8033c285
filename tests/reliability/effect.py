"""Tasks the fault-injection suite loads through ``TASK_MODULES``, as a user's own module would be.

Only the worker processes import this module (the test process must not: the
``@task`` declarations would join its own catalog). ``reliability.effect``
records what it did in the effects file (``tests.reliability.effects_db``),
outside Redis and the job store, so a fault in either cannot hide a lost or
repeated effect: a row per raw run, and the idempotent side effect itself,
``INSERT OR IGNORE`` of the job id, as the docs ask user tasks to make theirs.
Two runs of one attempt, or a run that starts after its job was final, are
duplicates the claim should have stopped.

The other tasks are the faults themselves: a task stuck in C code, and a
result too large for the row (it goes to result storage).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time

from services.worker.context import current_job
from services.worker.retry_policy import Retry
from shared.catalog import task
from tests.reliability.effects_db import EFFECTS_DB_ENV, connect

_local = threading.local()


def _effects() -> sqlite3.Connection:
    conn: sqlite3.Connection | None = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = connect(os.environ[EFFECTS_DB_ENV])
    return conn


@task(name="reliability.effect", queue="default", max_retries=3, time_limit_s=60, min_backoff_s=0.05)
def effect(key: str, work_ms: int = 0, fail_first: int = 0, retry_after_s: float | None = None) -> dict[str, str]:
    """Record one raw execution, work for ``work_ms``, then apply the idempotent effect once.

    The first ``fail_first`` attempts raise instead, so the job goes through a retry (after
    ``retry_after_s`` when given, else the task's backoff).
    """
    context = current_job()
    assert context is not None, "reliability.effect runs only inside the worker"
    conn = _effects()
    cursor = conn.execute(
        "INSERT INTO executions (job_id, key, attempt, pid, started) VALUES (?, ?, ?, ?, ?)",
        (context.job_id, key, context.attempt, os.getpid(), time.time()),
    )
    row_id = cursor.lastrowid
    # Short slices keep the task interruptible, as a well-behaved task is.
    deadline = time.monotonic() + work_ms / 1000
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.05))
    if context.attempt <= fail_first:
        conn.execute("UPDATE executions SET ended = ? WHERE rowid = ?", (time.time(), row_id))
        if retry_after_s is not None:
            raise Retry(after_s=retry_after_s, message=f"attempt {context.attempt} asks for a retry")
        raise RuntimeError(f"attempt {context.attempt} fails on purpose")
    conn.execute("INSERT OR IGNORE INTO effects (job_id, key, at) VALUES (?, ?, ?)", (context.job_id, key, time.time()))
    conn.execute("UPDATE executions SET ended = ? WHERE rowid = ?", (time.time(), row_id))
    return {"key": key}


@task(name="reliability.hang", queue="default", max_retries=0, time_limit_s=1)
def hang(seconds: float) -> str:
    """Block in one C call past the 1 s soft limit: only the hard limit (a new process) ends it."""
    time.sleep(seconds)
    return "unblocked"


@task(name="reliability.big_result", queue="default", max_retries=0, time_limit_s=30)
def big_result(size: int, work_ms: int = 0) -> str:
    """Return ``size`` characters, more than the row keeps inline, so the result goes to result storage."""
    time.sleep(work_ms / 1000)
    return "x" * size
