"""Input edges on every body route, on both stores: a 4xx naming what is wrong, and nothing stored.

U+0000 in any string, a body not sent as JSON, a key given twice, a queue no
worker serves, an eta in the year 9999 and a cron expression that never fires.
(Framing edges, a bad chunk or a transfer coding, are gunicorn's: tests/e2e/test_framing.py.)
"""

from __future__ import annotations

import json
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
NUL_BODIES: list[tuple[str, str, str, Any, list[str]]] = [
    ("an argument", "POST", "/v1/jobs", {**ECHO, "args": {"message": NUL}}, ["/args/message"]),
    ("the idempotency key", "POST", "/v1/jobs", {**ECHO, "idempotency_key": NUL}, ["/idempotency_key"]),
    ("the task name", "POST", "/v1/jobs", {"task": NUL, "args": {}}, ["/task"]),
    ("a name in args", "POST", "/v1/jobs", {**ECHO, "args": {NUL: 1}}, [f"/args/{NUL}"]),
    ("two places", "POST", "/v1/jobs", {**ECHO, "args": {"message": NUL}, "queue": NUL}, ["/args/message", "/queue"]),
    ("a batch entry", "POST", "/v1/jobs/batch", {"jobs": [ECHO, {**ECHO, "args": {"message": NUL}}]},
     ["/jobs/1/args/message"]),
    ("a workflow step", "POST", "/v1/workflows", {"type": "chain", "steps": [{**ECHO, "args": {"message": NUL}}]},
     ["/steps/0/args/message"]),
    ("a schedule id", "POST", "/v1/schedules", {**SCHEDULE, "id": NUL}, ["/id"]),
    ("a schedule's cron", "POST", "/v1/schedules", {**SCHEDULE, "cron": "0 2 * * *\x00"}, ["/cron"]),
    ("a schedule's time zone", "POST", "/v1/schedules", {**SCHEDULE, "timezone": "UTC\x00"}, ["/timezone"]),
    ("a schedule's args", "POST", "/v1/schedules", {**SCHEDULE, "args": {"message": NUL}}, ["/args/message"]),
    ("a requeued id", "POST", "/v1/queues/default/dead/requeue", {"ids": [NUL]}, ["/ids/0"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    [case[1:] for case in NUL_BODIES],
    ids=[case[0] for case in NUL_BODIES],
)
def test_nul_in_any_string_is_422_naming_its_path_and_stores_nothing(
    client: testing.TestClient, engine: Engine, method: str, path: str, body: Any, expected: list[str]
) -> None:
    # When a body holds U+0000 (PostgreSQL text cannot; SQLite would keep it)
    resp = send(client, method, path, body)
    # Then both stores refuse it alike, naming where it is
    assert resp.status_code == 422, resp.text
    assert paths(resp) == expected
    assert all("U+0000" in error["message"] for error in resp.json["errors"])
    assert stored(engine) == 0


def test_nul_in_a_schedule_change_is_422_and_changes_nothing(client: testing.TestClient) -> None:
    assert send(client, "POST", "/v1/schedules", SCHEDULE).status_code == 201
    resp = send(client, "PUT", "/v1/schedules/nightly", {"args": {"message": NUL}})
    assert resp.status_code == 422
    assert paths(resp) == ["/args/message"]
    assert client.simulate_get("/v1/schedules/nightly").json["args"] == {"message": "m"}


def test_nul_in_the_idempotency_key_header_is_422(client: testing.TestClient, engine: Engine) -> None:
    # NOTE: gunicorn refuses a header holding NUL (400); another server might pass it on.
    resp = send(client, "POST", "/v1/jobs", ECHO, **{"Idempotency-Key": NUL})
    assert resp.status_code == 422
    assert paths(resp) == ["/headers/Idempotency-Key"]
    assert stored(engine) == 0


CONTENT_TYPES: list[tuple[str | None, int]] = [
    ("application/json", 202),
    ("application/json; charset=utf-8", 202),
    ("Application/JSON; Charset=UTF-8", 202),
    ('application/json; charset="utf-8"', 202),
    ("application/json; charset=iso-8859-1", 415),
    ("application/json; version=2", 415),
    ("application/x-www-form-urlencoded", 415),
    ("text/plain", 415),
    ("application/merge-patch+json", 415),
    ("multipart/form-data; boundary=x", 415),
    ("", 415),
    (None, 415),
]


@pytest.mark.parametrize(("content_type", "status"), CONTENT_TYPES, ids=[str(c) for c, _ in CONTENT_TYPES])
def test_only_json_in_utf_8_is_accepted(
    client: testing.TestClient, engine: Engine, content_type: str | None, status: int
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    resp = client.simulate_post("/v1/jobs", body=json.dumps(ECHO).encode(), headers=headers)
    assert resp.status_code == status, resp.text
    if status == 415:
        assert "application/json" in resp.json["detail"]
        assert stored(engine) == 0


def test_no_body_and_no_content_type_is_400_empty_body(client: testing.TestClient) -> None:
    resp = client.simulate_post("/v1/jobs")
    assert resp.status_code == 400
    assert "empty" in resp.json["detail"]


@pytest.mark.parametrize(
    ("path", "raw", "key"),
    [
        ("/v1/jobs", '{"task": "diagnostics.echo", "task": "diagnostics.sleep", "args": {"message": "m"}}', "task"),
        ("/v1/jobs", '{"task": "diagnostics.echo", "args": {"message": "a", "message": "b"}}', "message"),
        ("/v1/jobs/batch", '{"jobs": [{"task": "diagnostics.echo", "args": {}, "args": {"message": "m"}}]}', "args"),
        ("/v1/schedules", '{"id": "x", "id": "y", "task": "diagnostics.echo", "cron": "@daily"}', "id"),
    ],
)
def test_a_key_given_twice_is_400_naming_it(
    client: testing.TestClient, engine: Engine, path: str, raw: str, key: str
) -> None:
    # When an object names a key twice (json.loads would silently keep the last)
    resp = client.simulate_post(path, body=raw, headers={**AS_ADMIN, "Content-Type": "application/json"})
    # Then the body is refused, naming the key
    assert resp.status_code == 400, resp.text
    assert repr(key) in resp.json["detail"]
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


@pytest.mark.parametrize("cron", ["0 0 30 2 *", "0 0 31 4 *", "0 0 31 2,4,6,9,11 *", "0 0 30-31 2 *"])
def test_a_cron_that_never_fires_is_422(client: testing.TestClient, engine: Engine, cron: str) -> None:
    resp = send(client, "POST", "/v1/schedules", {**SCHEDULE, "cron": cron})
    assert resp.status_code == 422, resp.text
    assert paths(resp) == ["/cron"]
    assert "never fires" in resp.json["errors"][0]["message"]
    assert stored(engine) == 0


def test_a_rare_cron_is_accepted_and_a_change_to_one_that_never_fires_is_not(client: testing.TestClient) -> None:
    # Given 29 February, and 29 February on a Monday (2044 next), which do fire
    for schedule_id, cron in (("leap-day", "0 0 29 2 *"), ("leap-monday", "0 0 29 2 1")):
        resp = send(client, "POST", "/v1/schedules", {**SCHEDULE, "id": schedule_id, "cron": cron})
        assert resp.status_code == 201, resp.text
        assert resp.json["next_run_at"] is not None
    # When one is changed to 30 February
    resp = send(client, "PUT", "/v1/schedules/leap-monday", {"cron": "0 0 30 2 *"})
    # Then the change is refused and the schedule keeps its timing
    assert resp.status_code == 422 and paths(resp) == ["/cron"]
    assert client.simulate_get("/v1/schedules/leap-monday").json["cron"] == "0 0 29 2 1"
