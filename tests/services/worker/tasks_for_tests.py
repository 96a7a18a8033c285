"""Tasks the worker tests load through ``TASK_MODULES``, as a user's own module would be."""

from __future__ import annotations

import time

from shared.catalog import task


@task(name="testing.block", queue="testing", max_retries=0, time_limit_s=1)
def block(seconds: float) -> str:
    """Block in one C call (no Python bytecode runs, so no async exception lands)."""
    time.sleep(seconds)
    return "unblocked"
