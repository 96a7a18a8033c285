"""Tasks that misbehave in C code, which the e2e tests load through ``TASK_MODULES``.

Each holds its thread where no Python bytecode runs, so no async exception (the watchdog's
``Cancelled``, Dramatiq's soft ``TimeLimitExceeded``) lands until it returns; some hold the GIL
too, so no other thread of their process (watchdog, heartbeat) runs meanwhile.
"""

from __future__ import annotations

import ctypes
import time
from pathlib import Path

from shared.catalog import task


@task(name="misbehaving.gil_loop", queue="misbehaving", max_retries=0, time_limit_s=1)
def gil_loop() -> int:
    """Sum integers in one C loop that holds the GIL for hours."""
    return sum(range(10**13))


@task(name="misbehaving.gil_sleep", queue="misbehaving", max_retries=0, time_limit_s=60)
def gil_sleep(seconds: int) -> str:
    """Sleep in libc holding the GIL (``PyDLL`` keeps it): no other thread of the process runs."""
    ctypes.PyDLL(None).sleep(seconds)
    return "woke"


@task(name="misbehaving.c_sleep", queue="misbehaving", max_retries=3, time_limit_s=60)
def c_sleep(seconds: int, started: str | None = None) -> str:
    """Sleep in libc with the GIL released: other threads run, but no async exception lands here.

    ``started``: a file touched just before the call, so a test knows the task is inside it.
    """
    if started:
        Path(started).touch()
    ctypes.CDLL(None).sleep(seconds)
    return "woke"


@task(name="misbehaving.beside", queue="misbehaving", max_retries=0, time_limit_s=60)
def beside(path: str) -> str:
    """A well-behaved job: runs in Python until ``path`` exists (at most 30 s)."""
    deadline = time.monotonic() + 30
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return "done"
