"""Input edges on every body route, on both stores: a 4xx naming what is wrong, and nothing stored.

A queue no worker serves, an eta in the year 9999, U+0000 in the idempotency key header.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from falcon import testing
from sqlalchemy import Engine, func, select

from shared.job import utcnow
from shared.store.models import jobs, schedules, workflows
from shared.store.tasks import TaskRegistry
from tests.services.api.conftest import ADMIN

ECHO = {"task": "diagnostics.echo", "args": {"message": "hi"}}
SCHEDULE = {"id": "nightly", "task": "diagnostics.echo", "args": {"message": "m"}, "cron": "0 2 * * *"}
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}


def stored(engine: Engine) -> int:
    """Rows a request may write: jobs, workflows and schedules."""
    with engine.connect() as conn:
        return sum(
            conn.execute(select(func.count()).select_from(table)).scalar_one() for table in (jobs, workflows, schedules)
        )


def send(client: testing.TestClient, method: str, path: str, body: Any, **headers: str) -> testing.Result:
    return client.simulate_request(method, path, json=body, headers={**AS_ADMIN, **headers})


def paths(resp: testing.Result) -> list[str]:
    return [error["path"] for error in resp.json.get("errors", [])]


NUL = "a\x00b"


def test_nul_in_the_idempotency_key_header_is_422(client: testing.TestClient, engine: Engine) -> None:
    # NOTE: gunicorn refuses a header holding NUL (400); another server might pass it on.
    resp = send(client, "POST", "/v1/jobs", ECHO, **{"Idempotency-Key": NUL})
    assert resp.status_code == 422
    assert paths(resp) == ["/headers/Idempotency-Key"]
    assert stored(engine) == 0


def test_a_queue_no_worker_serves_is_422_naming_the_known_queues(
    client: testing.TestClient, engine: Engine, registry: TaskRegistry
) -> None:
    # When a job is sent to a queue no registered task uses
    resp = send(client, "POST", "/v1/jobs", {**ECHO, "queue": "nobody-listens"})
    # Then it is refused with the queues there are, rather than left waiting forever
    assert resp.status_code == 422
    assert paths(resp) == ["/queue"]
    message = resp.json["errors"][0]["message"]
    assert "'nobody-listens'" in message
    assert all(queue in message for queue in registry.queues()) and "default" in message
    batch = send(client, "POST", "/v1/jobs/batch", {"jobs": [ECHO, {**ECHO, "queue": "nobody-listens"}]})
    assert batch.status_code == 422 and paths(batch) == ["/jobs/1/queue"]
    assert stored(engine) == 0
    # And a queue another task uses is a valid override
    resp = send(client, "POST", "/v1/jobs", {**ECHO, "queue": "reports"})
    assert resp.status_code == 202 and resp.json["queue"] == "reports"


def test_a_queue_registered_a_moment_ago_is_known_despite_the_cache(engine: Engine, registry: TaskRegistry) -> None:
    cached = TaskRegistry(engine, cache_s=60)
    assert not cached.knows_queue("fresh")
    spec = registry.get("diagnostics.echo")
    assert spec is not None
    registry.register([replace(spec, name="fresh.task", queue="fresh")], registered_by="tests")
    assert cached.knows_queue("fresh")
    assert "fresh" in cached.queues()


@pytest.mark.parametrize(
    ("eta", "status"),
    [
        ("9999-12-31T23:59:59Z", 422),
        ((utcnow() + timedelta(days=366)).isoformat(), 422),
        ((utcnow() + timedelta(days=300)).isoformat(), 202),
        ("2001-01-01T00:00:00Z", 202),
    ],
    ids=["year 9999", "366 days ahead", "300 days ahead", "in the past"],
)
def test_an_eta_more_than_a_year_ahead_is_422(
    client: testing.TestClient, engine: Engine, eta: str, status: int
) -> None:
    resp = send(client, "POST", "/v1/jobs", {**ECHO, "eta": eta})
    assert resp.status_code == status, resp.text
    if status == 422:
        assert paths(resp) == ["/eta"]
        assert "365 days" in resp.json["errors"][0]["message"]
        assert stored(engine) == 0
