"""The no-op task the benchmarks drain, for jobrelay (``TASK_MODULES``) and for bare Dramatiq."""

from __future__ import annotations

import os

from shared.catalog import task


@task(name="bench.noop", queue="bench", max_retries=0, time_limit_s=60)
def noop() -> None:
    """Do nothing: the benchmark measures the platform, not the task."""


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
