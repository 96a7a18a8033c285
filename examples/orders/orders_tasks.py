"""An example task module (``TASK_MODULES=orders_tasks``): orders stored in a database, shipped over HTTP.

Shows what a task author writes: per-process resources with a lifespan (a database pool, sync; an
HTTP client, async, on the loop the ``async def`` tasks run on), the job's context, and success and
failure callbacks, each a job of its own.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import sqlalchemy as sa
from jobrelay import current_job, resources, task, worker_lifespan
from sqlalchemy.pool import StaticPool

orders = sa.Table(
    "orders",
    sa.MetaData(),
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("amount_cents", sa.Integer, nullable=False),
)


class InvalidOrder(Exception):
    """An order no retry can mend."""


@worker_lifespan
def database() -> Iterator[dict[str, Any]]:
    """One connection pool per worker process, closed when the process stops."""
    url = os.environ.get("ORDERS_DATABASE_URL", "sqlite://")
    # An in-memory SQLite database is one connection shared by the process's threads.
    options: dict[str, Any] = (
        {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}} if url == "sqlite://" else {}
    )
    engine = sa.create_engine(url, **options)
    orders.metadata.create_all(engine)
    yield {"db": engine}
    engine.dispose()


@worker_lifespan
async def shipping_client() -> AsyncIterator[dict[str, Any]]:
    """One HTTP client per worker process, made on the loop the async tasks run on."""
    base_url = os.environ.get("ORDERS_SHIPPING_URL", "https://shipping.invalid")
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        yield {"shipping": client}


@task(
    name="orders.record",
    max_retries=3,
    non_retryable=[InvalidOrder],
    on_success="orders.ship",
    on_failure="orders.alert",
)
def record(order_id: str, amount_cents: int) -> dict[str, Any]:
    """Store an order; ``orders.ship`` runs when it is stored, ``orders.alert`` if it never is."""
    job = current_job()
    assert job is not None
    job.logger.info("recording order %s (attempt %d of %d)", order_id, job.attempt, job.max_retries + 1)
    if amount_cents <= 0:
        raise InvalidOrder(f"order {order_id}: the amount must be positive")
    with resources()["db"].begin() as conn:
        conn.execute(orders.insert().values(id=order_id, amount_cents=amount_cents))
    return {"order_id": order_id, "amount_cents": amount_cents}


@task(name="orders.ship", max_retries=5, min_backoff_s=5)
async def ship(job_id: str, result: dict[str, Any]) -> int:
    """The success callback: ask the shipping service to ship the stored order."""
    response = await resources()["shipping"].post("/shipments", json=result)
    response.raise_for_status()
    return response.status_code


@task(name="orders.alert", max_retries=0)
def alert(job_id: str, error: dict[str, Any]) -> str:
    """The failure callback: say which job failed, and why."""
    message = f"order job {job_id} failed: {error['type']}: {error['message']}"
    job = current_job()
    assert job is not None
    job.logger.error(message)
    return message
