"""Tasks that misbehave, as a user's module of ordinary tasks would, loaded through ``TASK_MODULES``.

Only the worker processes import this module (``misbehaving.py`` runs the scenario). Each is
one way a task can hurt the platform: a value with no JSON form, text or numbers that are not
strict JSON, an exception that cannot be printed, a coroutine, and a process that dies under it.
"""

from __future__ import annotations

import asyncio
import ctypes
import datetime
import os
import time

from shared.catalog import task

#: The retries of the tasks that kill their process: each crash counts one attempt.
CRASH_RETRIES = 1


@task(name="misbehaving.timedelta", max_retries=3)
def returns_timedelta() -> dict[str, object]:
    """A type with no JSON form, inside the result: the job fails at once, naming it and its place."""
    return {"items": [datetime.timedelta(seconds=5)]}


@task(name="misbehaving.nan", max_retries=3)
def returns_nan() -> float:
    return float("nan")


@task(name="misbehaving.surrogate", max_retries=3)
def returns_surrogate() -> str:
    return "\ud800"


@task(name="misbehaving.big_int", max_retries=3)
def returns_big_int() -> int:
    """2^64 + 1: above every machine integer, returned exactly."""
    return 2**64 + 1


@task(name="misbehaving.datetime", max_retries=3)
def returns_datetime() -> dict[str, object]:
    """A type the encoder knows: stored as RFC 3339 text."""
    return {"at": datetime.datetime(2026, 12, 5, 6, 0, tzinfo=datetime.UTC)}


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ raises")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ raises")


@task(name="misbehaving.unprintable", max_retries=0)
def raises_unprintable() -> None:
    raise Unprintable()


@task(name="misbehaving.coroutine", max_retries=0, time_limit_s=30)
async def awaits(ms: int = 200) -> str:
    await asyncio.sleep(ms / 1000)
    return "awaited"


@task(name="misbehaving.abort", max_retries=CRASH_RETRIES, min_backoff_s=0.1, max_backoff_s=0.2)
def aborts() -> None:
    os.abort()


@task(name="misbehaving.segfault", max_retries=CRASH_RETRIES, min_backoff_s=0.1, max_backoff_s=0.2)
def segfaults() -> None:
    ctypes.string_at(0)


@task(name="misbehaving.canary", max_retries=0, time_limit_s=60)
def canary(ms: int = 1500) -> str:
    """A well-behaved job with no retry, running beside the crashes: a crash it did not cause must not fail it."""
    deadline = time.monotonic() + ms / 1000
    while time.monotonic() < deadline:
        time.sleep(0.05)
    return "alive"
