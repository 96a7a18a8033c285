"""Misbehaving tasks, most with ``isolation="process"``, loaded by the isolation tests through ``TASK_MODULES``.

Each does to its process what careless or crash-prone code does: abort, segfault, leak,
hold the GIL past its time limit, block in C. Isolated, each must cost only its own job.
"""

from __future__ import annotations

import ctypes
import os
import resource

from shared.catalog import task
from shared.errors import PermanentTaskFailure

#: What ``leak`` keeps, as a leaking cache would.
_kept: list[bytes] = []


def _no_core_file() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


@task(name="isolated.abort", queue="isolated", isolation="process", max_retries=1, min_backoff_s=0.2, max_backoff_s=0.4)
def abort() -> None:
    """Kill its process with SIGABRT, as a failed assertion in C code does."""
    _no_core_file()
    os.abort()


@task(name="isolated.segfault", queue="isolated", isolation="process", max_retries=0)
def segfault() -> None:
    """Read address 0: a real segmentation fault."""
    _no_core_file()
    ctypes.string_at(0)


@task(name="isolated.spin", queue="isolated", isolation="process", max_retries=0, time_limit_s=1)
def spin() -> int:
    """Hold the GIL in one C call far past the 1 s time limit (no bytecode runs, no signal handler either)."""
    return sum(range(10**11))


@task(name="isolated.block", queue="isolated", isolation="process", max_retries=0, time_limit_s=120)
def block(seconds: int) -> str:
    """Block in libc's sleep, a C call no exception interrupts."""
    ctypes.CDLL(None).sleep(seconds)
    return "unblocked"


@task(name="isolated.leak", queue="isolated", isolation="process", max_retries=0)
def leak(mb: int) -> int:
    """Keep ``mb`` MiB for good (touched, so resident), as a leaking cache does; the child's pid."""
    _kept.append(b"\x01" * (mb << 20))
    return os.getpid()


@task(name="isolated.whoami", queue="isolated", isolation="process", max_retries=0)
def whoami() -> dict[str, int]:
    """Its child's pid, and its parent's (the forkserver of the worker process that ran it); its job as seen."""
    from jobrelay import current_job, report_progress

    report_progress(1, 2, "halfway")
    job = current_job()
    assert job is not None and job.deadline is not None
    return {"child": os.getpid(), "forkserver": os.getppid(), "queue": job.queue, "attempt": job.attempt}


class NotPicklable(Exception):
    def __init__(self, code: int, why: str) -> None:
        super().__init__(f"{code}: {why}")


class Refused(PermanentTaskFailure):
    """A failure no retry mends."""


@task(name="isolated.raises", queue="isolated", isolation="process", max_retries=3, min_backoff_s=60)
def raises(kind: str) -> object:
    """Raise (or return) what crosses the pipe badly: each ``kind`` one case."""
    if kind == "unpicklable":
        raise NotPicklable(7, "no way back")
    if kind == "permanent":
        raise Refused("never")
    return {"f": lambda: None}


@task(name="isolated.thread_leak", queue="isolated", max_retries=0)
def thread_leak(mb: int) -> int:
    """``leak`` on a worker thread (not isolated): its worker process keeps the memory; the process's pid."""
    _kept.append(b"\x01" * (mb << 20))
    return os.getpid()
