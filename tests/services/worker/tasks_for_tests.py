"""Tasks the worker tests load through ``TASK_MODULES``, as a user's own module would be."""

from __future__ import annotations

import time

from shared.catalog import task


@task(name="testing.block", queue="testing", max_retries=0, time_limit_s=1)
def block(seconds: float) -> str:
    """Block in one C call (no Python bytecode runs, so no async exception lands)."""
    time.sleep(seconds)
    return "unblocked"


@task(name="testing.abort", queue="testing", max_retries=2, time_limit_s=10, min_backoff_s=0.2, max_backoff_s=0.5)
def abort() -> None:
    """Kill this worker process with SIGABRT, as a crash in C code would (no core file)."""
    import os
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.abort()


@task(name="testing.accumulate", queue="default", max_retries=0, time_limit_s=10)
def accumulate(add: float, input: float | list[float] | None = None) -> float:
    """``add`` plus the previous result (a chain step) or the sum of the results (a chord callback)."""
    if isinstance(input, list):
        return add + sum(input)
    return add + (input or 0)


@task(name="testing.retry_later", queue="default", max_retries=5, time_limit_s=10)
def retry_later(after_s: float) -> None:
    """Always ask to run again after ``after_s`` seconds."""
    from services.worker.retry_policy import Retry

    raise Retry(after_s=after_s)


@task(name="testing.wait_for_file", queue="default", max_retries=0, time_limit_s=60)
def wait_for_file(path: str) -> str:
    """Run until ``path`` exists (at most 30 s): a test decides when this job's body ends."""
    from pathlib import Path

    deadline = time.monotonic() + 30
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return "released"


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


@task(name="testing.returns", queue="default", max_retries=3, time_limit_s=10)
def returns(kind: str) -> object:
    """Return (or raise) what a careless task might: each ``kind`` one case of shared/results/encoding.py."""
    import datetime
    import decimal

    values: dict[str, object] = {
        "datetime": {"at": datetime.datetime(2026, 12, 4, 18, 30, tzinfo=datetime.UTC)},
        "decimal": decimal.Decimal("12.50"),
        "huge": 2**64 + 1,
        "bytes": b"\x00\x01binary",
        "object": {"items": [1, object()]},
        "nan": float("nan"),
        "surrogate": "\ud800",
    }
    if kind == "unprintable":
        raise _Unprintable()
    return values[kind]


@task(name="testing.async_sleep", queue="default", max_retries=0, time_limit_s=10)
async def async_sleep(seconds: float, steps: int = 1, marker: str | None = None) -> dict[str, object]:
    """Await ``asyncio.sleep`` for ``seconds`` in ``steps``, reporting progress; touch ``marker`` if cancelled."""
    import asyncio
    from pathlib import Path

    from services.worker.context import current_job, report_progress_async

    try:
        for step in range(1, steps + 1):
            await asyncio.sleep(seconds / steps)
            await report_progress_async(step, steps, "awaited")
    except asyncio.CancelledError:
        if marker:
            Path(marker).touch()
        raise
    job = current_job()
    return {"slept_s": seconds, "job_id": job.job_id if job else None}


@task(name="testing.async_file", queue="default", max_retries=0, time_limit_s=10)
async def async_file(lines: list[str]) -> int:
    """Write ``lines`` to a result file from a thread (the job is visible there too)."""
    import asyncio

    from services.worker.context import result_file

    def write() -> int:
        with result_file("text/plain") as handle:
            for line in lines:
                handle.write(f"{line}\n".encode())
        return len(lines)

    await asyncio.sleep(0)
    return await asyncio.to_thread(write)
