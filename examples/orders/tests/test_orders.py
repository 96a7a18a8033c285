"""The example's tests: through jobrelay (validation, retries, callbacks), with no server started."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from jobrelay import ApiInvalidRequest
from jobrelay.testing import JobrelayStack, run

from orders_tasks import orders, record


def test_an_order_is_recorded_with_fake_resources(db: sa.Engine) -> None:
    job = run(record, {"order_id": "A-1", "amount_cents": 1250}, resources={"db": db})

    assert job["status"] == "succeeded" and job["attempts"] == 1
    assert job["result"] == {"order_id": "A-1", "amount_cents": 1250}
    with db.connect() as conn:
        assert conn.execute(sa.select(orders.c.id)).scalars().all() == ["A-1"]


def test_an_order_runs_with_the_real_lifespans() -> None:
    # The lifespans' own pool (in-memory SQLite) and HTTP client (not called by this task).
    assert run("orders.record", {"order_id": "B-2", "amount_cents": 99})["status"] == "succeeded"


def test_bad_args_are_refused_as_the_api_would() -> None:
    with pytest.raises(ApiInvalidRequest, match="/args/amount_cents"):
        run(record, {"order_id": "C-3"})


def test_a_stored_order_is_shipped_by_its_callback(
    jobrelay_stack: JobrelayStack, shipments: list[dict[str, Any]]
) -> None:
    job_id = jobrelay_stack.submit(record, {"order_id": "D-4", "amount_cents": 500})

    assert jobrelay_stack.drain() == 2  # the order, then its on_success callback

    job = jobrelay_stack.job(job_id)
    shipped = jobrelay_stack.job(job["callback_job_id"])
    assert shipped["task"] == "orders.ship" and shipped["result"] == 201
    assert shipments == [{"order_id": "D-4", "amount_cents": 500}]


def test_an_invalid_order_fails_at_once_and_alerts(jobrelay_stack: JobrelayStack) -> None:
    job_id = jobrelay_stack.submit(record, {"order_id": "E-5", "amount_cents": 0})
    jobrelay_stack.drain()

    job = jobrelay_stack.job(job_id)
    assert job["status"] == "failed" and job["attempts"] == 1
    alert = jobrelay_stack.job(job["callback_job_id"])
    assert alert["result"] == f"order job {job_id} failed: InvalidOrder: order E-5: the amount must be positive"
