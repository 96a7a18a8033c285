"""The tasks of the parity scenarios: imported here for the in-memory stack, named in ``TASK_MODULES``
for the real worker process."""

from __future__ import annotations

from typing import Any

from jobrelay import current_job, report_progress, task


@task(name="parity.echo", max_retries=0, time_limit_s=30)
def echo(value: Any = None) -> Any:
    """Return what it was given (each JSON result type)."""
    return value


@task(name="parity.twice", max_retries=2, time_limit_s=30, min_backoff_s=0.05, max_backoff_s=0.1)
def twice(value: int) -> int:
    """Fail on the first attempt, succeed on the second."""
    job = current_job()
    assert job is not None
    if job.attempt == 1:
        raise ConnectionError("the first attempt fails")
    return value * job.attempt


@task(name="parity.broken", max_retries=1, time_limit_s=30, min_backoff_s=0.05, max_backoff_s=0.1)
def broken() -> None:
    """Always fail."""
    raise ValueError("always broken")


@task(name="parity.add", max_retries=0, time_limit_s=30)
def add(amount: int, input: int | list[int] | None = None) -> int:
    """``amount`` plus the previous step's result (a chain) or the sum of the steps' (a chord)."""
    if isinstance(input, list):
        return amount + sum(input)
    return amount + (input or 0)


@task(name="parity.progress", max_retries=0, time_limit_s=30)
def progress(steps: int) -> str:
    """Report progress to completion."""
    for step in range(1, steps + 1):
        report_progress(step, steps, f"step {step}")
    return "done"


@task(name="parity.notified", max_retries=0, time_limit_s=30, on_success="parity.note", on_failure="parity.note")
def notified(fail: bool) -> str:
    """Succeed or fail, with callbacks either way."""
    if fail:
        raise RuntimeError("asked to fail")
    return "ok"


@task(name="parity.note", max_retries=0, time_limit_s=30)
def note(job_id: str, result: Any = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
    """The callback: what it was told."""
    return {"result": result, "error": error}
