"""Tasks and worker lifespans for the lifespan tests, loaded through ``TASK_MODULES`` as a user's module.

``LIFESPAN_LOG`` names a file each lifespan appends ``<event> <name> <pid>`` lines to;
``LIFESPAN_MODE`` picks a bad case: ``raise_start``, ``hang_start``, ``raise_stop``, ``raise_in_child``
(in an isolation child only).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from jobrelay import current_job, resources, task, worker_lifespan


def _record(event: str, name: str) -> None:
    with Path(os.environ["LIFESPAN_LOG"]).open("a") as log:
        log.write(f"{event} {name} {os.getpid()}\n")


@worker_lifespan
def pool() -> Iterator[dict[str, object]]:
    mode = os.environ.get("LIFESPAN_MODE", "")
    _record("start", "pool")
    if mode == "raise_start":
        raise ConnectionRefusedError("the pool's database refused the connection")
    if mode == "hang_start":
        time.sleep(3600)
    if mode == "raise_in_child" and multiprocessing.parent_process() is not None:
        raise ConnectionRefusedError("the child's database refused the connection")
    yield {"pool": f"pool-of-{os.getpid()}"}
    _record("stop", "pool")


@worker_lifespan
async def http_client() -> AsyncIterator[dict[str, object]]:
    _record("start", "http_client")
    # A loop-bound resource: usable only on the loop it was made on.
    client = {"loop": asyncio.get_running_loop(), "lock": asyncio.Lock()}
    yield {"client": client}
    _record("stop", "http_client")
    if os.environ.get("LIFESPAN_MODE") == "raise_stop":
        raise RuntimeError("the client would not close")


@task(name="lifespans.sync_uses", queue="default", max_retries=0, time_limit_s=10)
def sync_uses() -> dict[str, object]:
    """Return the pool this process's lifespan gave."""
    return {"pool": resources()["pool"], "pid": os.getpid()}


@task(name="lifespans.async_uses", queue="default", max_retries=0, time_limit_s=10)
async def async_uses() -> dict[str, object]:
    """Use the loop-bound client on the task's own loop."""
    client = resources()["client"]
    async with client["lock"]:
        await asyncio.sleep(0)
    job = current_job()
    assert job is not None
    return {"same_loop": client["loop"] is asyncio.get_running_loop(), "pid": os.getpid(), "task": job.task}


@task(name="lifespans.isolated_uses", queue="default", max_retries=0, time_limit_s=20, isolation="process")
def isolated_uses() -> dict[str, object]:
    """Return the pool of the isolation child this runs in."""
    return {"pool": resources()["pool"], "pid": os.getpid()}
