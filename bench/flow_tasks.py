"""The tasks of the flow-limits benchmark (``TASK_MODULES=bench.flow_tasks``), on queue ``bench``.

``record`` names a file each start and end is appended to (time, job), read back for the
largest number running at once and the achieved start rate.
"""

from __future__ import annotations

import time

from services.worker.context import current_job
from shared.catalog import task


def _note(record: str, event: str) -> None:
    context = current_job()
    with open(record, "a") as out:
        out.write(f"{event} {time.time():.6f} {context.job_id if context else '?'}\n")


@task(name="bench.noop", queue="bench", max_retries=0, time_limit_s=60)
def noop() -> None:
    """No limit: the baseline."""


@task(name="bench.noop_capped", queue="bench", max_retries=0, time_limit_s=60, concurrency=1000)
def noop_capped() -> None:
    """A concurrency limit declared but never reached (16 threads): what checking it costs."""


@task(name="bench.capped5", queue="bench", max_retries=0, time_limit_s=60, concurrency=5)
def capped5(record: str, run_s: float) -> None:
    """At most five at once, whatever the threads."""
    _note(record, "start")
    time.sleep(run_s)
    _note(record, "end")


@task(name="bench.rated", queue="bench", max_retries=0, time_limit_s=60, rate_limit="20/s")
def rated(record: str) -> None:
    """At most 20 starts a second."""
    _note(record, "start")
