"""Tasks with flow limits, loaded by the flow tests' workers through ``TASK_MODULES``.

Each appends ``start``/``end`` lines (time, job id, pid) to the file ``record`` names, so a test
reads back how many ran at once and which process ran which.
"""

from __future__ import annotations

import os
import time

from services.worker.context import current_job
from shared.catalog import task


def _note(record: str, event: str) -> None:
    context = current_job()
    job_id = context.job_id if context is not None else "?"
    with open(record, "a") as out:
        out.write(f"{event} {time.time():.6f} {job_id} {os.getpid()}\n")


def _run(record: str, run_s: float) -> None:
    _note(record, "start")
    try:
        time.sleep(run_s)
    finally:
        _note(record, "end")


@task(name="flow.capped", queue="flow", max_retries=0, time_limit_s=60, concurrency=2)
def capped(record: str, run_s: float) -> None:
    """At most two at once, across every worker."""
    _run(record, run_s)


@task(name="flow.per_key", queue="flow", max_retries=0, time_limit_s=60, concurrency=1, concurrency_key="customer_id")
def per_key(record: str, customer_id: str, run_s: float) -> None:
    """At most one at once per customer."""
    _run(record, run_s)


@task(name="flow.single", queue="flow", max_retries=0, time_limit_s=120, concurrency=1)
def single(record: str, run_s: float) -> None:
    """One at a time."""
    _run(record, run_s)


@task(name="flow.rated", queue="flow", max_retries=0, time_limit_s=10, rate_limit="5/s")
def rated(record: str) -> None:
    """At most five starts a second."""
    _note(record, "start")


@task(name="flow.brief", queue="flow", max_retries=0, time_limit_s=10)
def brief(record: str) -> None:
    """Starts and ends at once: the fair sharing test's bursts."""
    _note(record, "start")
