"""Diagnostic tasks: check the path end to end, exercise progress, retries and failures."""

from __future__ import annotations

import time
from typing import Annotated

from services.worker.context import current_job, report_progress
from shared.catalog import task
from shared.schema import Schema

#: Longest uninterruptible sleep inside ``diagnostics.sleep``.
SLICE_S = 0.1


class DiagnosticFailure(Exception):
    """Raised on purpose by ``diagnostics.fail``."""


@task(name="diagnostics.echo", queue="default", max_retries=0, time_limit_s=30)
def echo(message: str) -> str:
    """Return ``message`` unchanged."""
    return message


@task(name="diagnostics.sleep", queue="default", max_retries=0, time_limit_s=3600)
def sleep(seconds: Annotated[float, Schema(minimum=0, maximum=3600)]) -> dict[str, float]:
    """Sleep for ``seconds``, reporting progress in up to ten steps."""
    started = time.monotonic()
    steps = max(1, min(10, int(seconds * 4)))
    for step in range(steps):
        report_progress(step, steps, "sleeping")
        step_end = started + seconds * (step + 1) / steps
        # Short slices keep the task interruptible (cancellation, soft time limit).
        while (left := step_end - time.monotonic()) > 0:
            time.sleep(min(left, SLICE_S))
    report_progress(steps, steps, "done")
    return {"slept_s": round(time.monotonic() - started, 3)}


@task(name="diagnostics.fail", queue="default", max_retries=3, time_limit_s=60, min_backoff_s=0.1)
def fail(
    succeed_on_attempt: Annotated[int, Schema(minimum=1)] | None = None,
    message: str = "failing on purpose",
) -> dict[str, int]:
    """Raise until attempt ``succeed_on_attempt`` (never, when null)."""
    context = current_job()
    attempt = context.attempt if context else 1
    if succeed_on_attempt is None or attempt < succeed_on_attempt:
        raise DiagnosticFailure(f"{message} (attempt {attempt})")
    return {"succeeded_on_attempt": attempt}
