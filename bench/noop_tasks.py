"""The tasks the benchmarks run: a no-op (jobrelay and bare Dramatiq), a failure and a sleep (jobrelay)."""

from __future__ import annotations

import os
import time

from shared.catalog import task


@task(name="bench.noop", queue="bench", max_retries=0, time_limit_s=60)
def noop() -> None:
    """Do nothing: the benchmark measures the platform, not the task."""


class BenchFailure(Exception):
    """What ``bench.fail`` raises: an ordinary task error."""


@task(name="bench.fail", queue="bench", max_retries=0, time_limit_s=60)
def fail() -> None:
    """Raise at once: with no retries left its job fails for good and is dead-lettered."""
    raise BenchFailure("bench.fail always fails")


@task(name="bench.sleep", queue="bench", max_retries=1, time_limit_s=600, min_backoff_s=0.05, max_backoff_s=0.1)
def sleep(seconds: float) -> None:
    """Hold a worker thread for ``seconds``: the redelivery benchmark kills workers in the middle."""
    time.sleep(seconds)


def bare_broker() -> object:
    """``dramatiq bench.noop_tasks:bare_broker``-style setup: bare Dramatiq with its default middleware."""
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=os.environ["REDIS_URL"])
    dramatiq.set_broker(broker)

    @dramatiq.actor(actor_name="bench.noop", queue_name="bench", max_retries=0)
    def bare_noop() -> None:
        pass

    return broker
