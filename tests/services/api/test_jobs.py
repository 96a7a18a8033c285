"""``/v1/jobs`` over a real store and a real Redis."""

from __future__ import annotations

import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import redis
from falcon import testing

from services.api.app import create_app
from services.scheduler.relay import relay
from services.worker.tasks import load_task_modules
from shared.broker.publishing import build_broker
from shared.ids import new_id
from shared.job import JobStatus, utcnow
from shared.settings import Settings
from shared.store.attempts import ClaimRequest, FinishRequest
from shared.store.engine import create_store_engine, migrate
from shared.store.jobs import JobFilter, JobStore
from shared.store.tasks import TaskRegistry
from tests.services.api.conftest import ADMIN, READER, WRITER
from tests.shared.store.test_jobs import make_job

ECHO = {"task": "diagnostics.echo", "args": {"message": "hi"}}


def stored_count(store: JobStore) -> int:
    return len(store.page(JobFilter(), limit=500).items)


def queued_messages(redis_client: redis.Redis, queue: str = "default", *, expect: int = 0) -> list[dict]:
    """The messages on ``queue``, once there are ``expect`` of them (a job is published just after its 202)."""
    deadline = time.monotonic() + 5
    while True:
        raw = redis_client.hgetall(f"dramatiq:{queue}.msgs")
        if len(raw) >= expect or time.monotonic() > deadline:
            return [json.loads(v) for v in raw.values()]
        time.sleep(0.01)


def test_submit_answers_202_with_job_and_location(
    client: testing.TestClient, store: JobStore, redis_client: redis.Redis
) -> None:
    resp = client.simulate_post("/v1/jobs", json=ECHO)
    assert resp.status_code == 202
    job = resp.json
    assert resp.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["task"] == "diagnostics.echo" and job["queue"] == "default"
    assert job["args"] == {"message": "hi"} and job["attempts"] == 0
    # The row is committed marked published under an outbox entry, deleted in the background once
    # the message is in Redis; the message id is the job id.
    assert store.get(job["id"]).published_at is not None
    deadline = time.monotonic() + 5
    while store.outbox_left(older_than=utcnow() + timedelta(minutes=1)):
        assert time.monotonic() < deadline, "the outbox entry was never deleted"
        time.sleep(0.01)
    [message] = queued_messages(redis_client, expect=1)
    assert message["message_id"] == job["id"] and message["kwargs"] == {"message": "hi"}
    assert client.simulate_get(f"/v1/jobs/{job['id']}").json["id"] == job["id"]


def test_invalid_args_answer_422_naming_the_path_and_store_nothing(
    client: testing.TestClient, store: JobStore, redis_client: redis.Redis
) -> None:
    resp = client.simulate_post("/v1/jobs", json={"task": "diagnostics.sleep", "args": {"seconds": "x"}})
    assert resp.status_code == 422
    assert resp.headers["content-type"] == "application/problem+json"
    assert [e["path"] for e in resp.json["errors"]] == ["/args/seconds"]
    assert stored_count(store) == 0 and queued_messages(redis_client) == []


def test_every_problem_is_listed(client: testing.TestClient) -> None:
    resp = client.simulate_post(
        "/v1/jobs",
        json={"task": "diagnostics.sleep", "args": {"extra": 1}, "priority": 99, "delay_s": -1, "bogus": True},
    )
    assert resp.status_code == 422
    paths = {e["path"] for e in resp.json["errors"]}
    assert paths == {"/bogus", "/args/seconds", "/args/extra", "/priority", "/delay_s"}


def test_unknown_task_is_422(client: testing.TestClient) -> None:
    resp = client.simulate_post("/v1/jobs", json={"task": "nope.never", "args": {}})
    assert resp.status_code == 422 and resp.json["errors"][0]["path"] == "/task"
    assert "no worker has registered" in resp.json["errors"][0]["message"]


def test_malformed_json_is_400(client: testing.TestClient, store: JobStore) -> None:
    resp = client.simulate_post("/v1/jobs", body=b'{"task": ', headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and resp.json["status"] == 400
    resp = client.simulate_post("/v1/jobs", body=b"\xff\xfe", headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    assert stored_count(store) == 0


def test_deeply_nested_json_is_400_not_500(client: testing.TestClient) -> None:
    resp = client.simulate_post("/v1/jobs", body=b"[" * 100_000, headers={"Content-Type": "application/json"})
    assert resp.status_code == 400


def test_wrong_content_type_is_415(client: testing.TestClient) -> None:
    resp = client.simulate_post("/v1/jobs", body=b"<job/>", headers={"Content-Type": "application/xml"})
    assert resp.status_code == 415


def test_curl_default_content_type_is_415(client: testing.TestClient, store: JobStore) -> None:
    # `curl -d '{...}'` sends application/x-www-form-urlencoded: a JSON body must say it is one.
    resp = client.simulate_post(
        "/v1/jobs", body=json.dumps(ECHO).encode(), headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert resp.status_code == 415
    assert "application/json" in resp.json["detail"]
    assert stored_count(store) == 0


def test_body_over_the_limit_is_413(client: testing.TestClient, store: JobStore) -> None:
    big = {"task": "diagnostics.echo", "args": {"message": "x" * (1024 * 1024 + 10)}}
    resp = client.simulate_post("/v1/jobs", json=big)
    assert resp.status_code == 413 and stored_count(store) == 0


def test_auth_401_403_and_scopes(client: testing.TestClient) -> None:
    assert client.simulate_post("/v1/jobs", json=ECHO, headers={"Authorization": ""}).status_code == 401
    resp = client.simulate_post("/v1/jobs", json=ECHO, headers={"Authorization": "Bearer wrong-token-xyz"})
    assert resp.status_code == 401 and resp.headers["www-authenticate"].startswith("Bearer")
    assert "wrong-token" not in resp.text
    resp = client.simulate_post("/v1/jobs", json=ECHO, headers={"Authorization": f"Bearer {READER}"})
    assert resp.status_code == 403 and "write" in resp.json["detail"]
    assert client.simulate_get("/v1/jobs", headers={"Authorization": f"Bearer {READER}"}).status_code == 200
    assert client.simulate_post("/v1/jobs", json=ECHO, headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 202


def test_service_endpoints_need_no_token(client: testing.TestClient) -> None:
    anonymous = {"Authorization": ""}
    assert client.simulate_get("/healthz", headers=anonymous).status_code == 200
    ready = client.simulate_get("/readyz", headers=anonymous)
    assert ready.status_code == 200 and ready.json["checks"] == {"store": "ok", "redis": "ok"}
    assert b"jobrelay_http_requests_total" in client.simulate_get("/metrics", headers=anonymous).content


def test_unknown_route_is_problem_404(client: testing.TestClient) -> None:
    resp = client.simulate_get("/v2/nothing")
    assert resp.status_code == 404 and resp.headers["content-type"] == "application/problem+json"
    assert client.simulate_get("/v1/jobs/01a20c37-2245-7190-9508-c8914ae674fd").status_code == 404


def test_idempotency_key_header_and_body(client: testing.TestClient, store: JobStore) -> None:
    first = client.simulate_post("/v1/jobs", json=ECHO, headers={"Idempotency-Key": "abc"})
    again = client.simulate_post("/v1/jobs", json=ECHO, headers={"Idempotency-Key": "abc"})
    assert first.status_code == 202 and again.status_code == 200 and again.json["id"] == first.json["id"]
    same_in_body = client.simulate_post("/v1/jobs", json={**ECHO, "idempotency_key": "abc"})
    assert same_in_body.status_code == 200 and same_in_body.json["id"] == first.json["id"]
    other = client.simulate_post(
        "/v1/jobs", json={"task": "diagnostics.echo", "args": {"message": "other"}}, headers={"Idempotency-Key": "abc"}
    )
    assert other.status_code == 409
    assert stored_count(store) == 1


def test_concurrent_submits_are_committed_and_published_each(
    client: testing.TestClient, store: JobStore, redis_client: redis.Redis
) -> None:
    # Given many threads submitting at once (their inserts share group commits), half with one key
    def post(index: int) -> testing.Result:
        headers = {"Idempotency-Key": "shared"} if index % 2 else {}
        body = ECHO if index % 4 != 3 else {"task": "diagnostics.echo", "args": {"message": "other"}}
        return client.simulate_post("/v1/jobs", json=body, headers=headers)

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(post, range(32)))
    # Then every keyless request got its own job, the key made one job, and each answer is as alone
    assert all(r.status_code == 202 for i, r in enumerate(results) if i % 2 == 0)
    winners = [i for i in range(1, 32, 2) if results[i].status_code == 202]
    assert len(winners) == 1
    for index in set(range(1, 32, 2)) - set(winners):
        expected = 200 if index % 4 == winners[0] % 4 else 409
        assert results[index].status_code == expected, index
    assert stored_count(store) == 17
    assert len(queued_messages(redis_client, expect=17)) == 17


def test_delay_makes_a_scheduled_job(client: testing.TestClient, redis_client: redis.Redis) -> None:
    resp = client.simulate_post("/v1/jobs", json={**ECHO, "delay_s": 60})
    assert resp.status_code == 202 and resp.json["status"] == "scheduled" and resp.json["scheduled_for"]
    assert len(queued_messages(redis_client, "default.DQ", expect=1)) == 1
    assert queued_messages(redis_client) == []


def test_broker_down_still_accepts_and_leaves_the_job_for_the_relay(
    settings: Settings, store: JobStore, registry: TaskRegistry, redis_url: str, redis_client: redis.Redis
) -> None:
    from services.api.app import create_app
    from shared.broker.publishing import build_broker

    # Given an API whose Redis does not answer
    dead = build_broker("redis://127.0.0.1:1/0")
    app = create_app(settings, store=store, registry=registry, broker=dead)
    client = testing.TestClient(app, headers={"Authorization": f"Bearer {ADMIN}"})
    # When a job is submitted
    resp = client.simulate_post("/v1/jobs", json=ECHO)
    # Then it is accepted, stored, and its outbox entry waits for the relay
    assert resp.status_code == 202
    job = store.get(resp.json["id"])
    assert job.status is JobStatus.QUEUED
    [(_, [waiting])] = store.outbox_left(older_than=utcnow() + timedelta(minutes=1))
    assert waiting.id == job.id
    assert client.simulate_get("/readyz").status_code == 503
    # And once Redis answers, the relay publishes it and drops the entry
    assert relay(store, build_broker(redis_url), grace_s=0) == 1
    [message] = queued_messages(redis_client, expect=1)
    assert message["message_id"] == job.id
    assert store.outbox_left(older_than=utcnow() + timedelta(minutes=1)) == []


def test_batch_is_all_or_nothing(client: testing.TestClient, store: JobStore) -> None:
    bad = client.simulate_post("/v1/jobs/batch", json={"jobs": [ECHO, ECHO, {"task": "diagnostics.sleep"}]})
    assert bad.status_code == 422 and bad.json["errors"][0]["path"] == "/jobs/2/args/seconds"
    assert stored_count(store) == 0
    good = client.simulate_post("/v1/jobs/batch", json={"jobs": [ECHO] * 3})
    assert good.status_code == 202 and len(good.json["jobs"]) == 3 and stored_count(store) == 3


def test_list_with_cursor_and_validation(client: testing.TestClient) -> None:
    ids = [client.simulate_post("/v1/jobs", json=ECHO).json["id"] for _ in range(3)]
    page = client.simulate_get("/v1/jobs", params={"limit": "2"}).json
    assert [j["id"] for j in page["items"]] == ids[::-1][:2]
    rest = client.simulate_get("/v1/jobs", params={"limit": "2", "cursor": page["next_cursor"]}).json
    assert [j["id"] for j in rest["items"]] == ids[:1] and rest["next_cursor"] is None
    bad = client.simulate_get("/v1/jobs", params={"limit": "0", "status": "nope"})
    assert bad.status_code == 422 and {e["path"] for e in bad.json["errors"]} == {"/query/limit", "/query/status"}
    assert client.simulate_get("/v1/jobs", params={"cursor": "garbage"}).status_code == 422
    # An empty cursor, which the document allows, is the first page (for dead letters too)
    first = client.simulate_get("/v1/jobs", query_string="limit=2&cursor=")
    assert first.status_code == 200 and [j["id"] for j in first.json["items"]] == ids[::-1][:2]
    assert client.simulate_get("/v1/queues/default/dead", query_string="cursor=").status_code == 200


def test_cancel_queued_job(client: testing.TestClient) -> None:
    job_id = client.simulate_post("/v1/jobs", json=ECHO).json["id"]
    resp = client.simulate_post(f"/v1/jobs/{job_id}/cancel")
    assert resp.status_code == 202 and resp.json["status"] == "cancelled"
    assert client.simulate_post(f"/v1/jobs/{job_id}/cancel").status_code == 409


def test_tasks_lists_the_registered_catalog(client: testing.TestClient) -> None:
    items = {t["name"]: t for t in client.simulate_get("/v1/tasks").json["items"]}
    assert {"diagnostics.echo", "diagnostics.sleep", "diagnostics.fail"} <= set(items)
    assert items["diagnostics.sleep"]["args_schema"]["required"] == ["seconds"]
    assert items["diagnostics.sleep"]["cancel_grace_s"] == 2.0
    assert items["diagnostics.sleep"]["isolation"] == "thread"


def test_submissions_and_rejections_are_counted(client: testing.TestClient) -> None:
    from prometheus_client import REGISTRY

    def value(name: str, labels: dict[str, str]) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    submitted = ("jobrelay_jobs_submitted_total", {"task": "diagnostics.echo", "queue": "default"})
    rejected = ("jobrelay_jobs_rejected_total", {"reason": "invalid"})
    before = value(*submitted), value(*rejected)
    client.simulate_post("/v1/jobs", json=ECHO)
    client.simulate_post("/v1/jobs", json={"task": "diagnostics.sleep", "args": {}})
    assert (value(*submitted), value(*rejected)) == (before[0] + 1, before[1] + 1)
    route = {"method": "POST", "route": "/v1/jobs", "status": "202"}
    assert value("jobrelay_http_requests_total", route) >= 1


def test_store_down_is_a_clear_503_not_a_500(settings: Settings, registry: TaskRegistry, tmp_path: object) -> None:
    from sqlalchemy import create_engine

    from services.api.app import create_app
    from shared.broker.publishing import build_broker

    # Given an API whose job store cannot be opened
    dead_store = JobStore(
        create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none", connect_args={"connect_timeout": 1})
    )
    app = create_app(
        settings, store=dead_store, registry=registry, broker=build_broker(settings.require_redis_url("t"))
    )
    client = testing.TestClient(app, headers={"Authorization": f"Bearer {ADMIN}"})
    # Then reads and writes answer 503 problems
    for resp in (client.simulate_post("/v1/jobs", json=ECHO), client.simulate_get("/v1/jobs")):
        assert resp.status_code == 503 and resp.headers["content-type"] == "application/problem+json"
        assert "job store" in resp.json["detail"]


def test_a_locked_sqlite_store_answers_503_within_the_timeout_and_stores_nothing(
    settings: Settings, sqlite_url: str
) -> None:
    # Given an API on a SQLite store with a 0.3 s store timeout
    engine = create_store_engine(sqlite_url, timeout_s=0.3)
    migrate(engine)
    registry = TaskRegistry(engine, cache_s=0)
    registry.register(load_task_modules().specs(), registered_by="tests")
    store = JobStore(engine)
    app = create_app(settings, store=store, registry=registry, broker=build_broker(settings.require_redis_url("t")))
    client = testing.TestClient(app, headers={"Authorization": f"Bearer {ADMIN}"})
    # When another program holds the database locked
    foreign = sqlite3.connect(engine.url.database or "", isolation_level=None)
    foreign.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        resp = client.simulate_post("/v1/jobs", json=ECHO)
        # Then a submission answers a clear 503 after about the timeout, not 30 s later
        assert resp.status_code == 503, resp.text
        assert "job store" in resp.json["detail"] and resp.headers["retry-after"] == "1"
        assert time.monotonic() - started < 3
        # And reads still answer
        assert client.simulate_get("/v1/jobs").status_code == 200
    finally:
        foreign.execute("ROLLBACK")
        foreign.close()
    # And nothing was stored; once the lock is gone submissions are accepted again
    assert store.page(JobFilter(), limit=10, cursor=None).items == []
    assert client.simulate_post("/v1/jobs", json=ECHO).status_code == 202


def test_a_problem_lists_at_most_100_errors_and_says_how_many_there_were(client: testing.TestClient) -> None:
    # Given a job with 500 arguments its task does not take
    args = {"message": "hi", **{f"extra{i}": i for i in range(500)}}
    resp = client.simulate_post("/v1/jobs", json={"task": "diagnostics.echo", "args": args})
    # Then the 422 lists the first 100 and its detail says there were 500
    assert resp.status_code == 422
    assert len(resp.json["errors"]) == 100
    assert "the first 100 of 500 errors are listed" in resp.json["detail"]


def test_a_failed_jobs_traceback_is_shown_to_admin_keys_only(client: testing.TestClient, store: JobStore) -> None:
    # Given a failed job whose error carries a traceback
    job = make_job()
    store.insert([job])
    store.claim(job.id, owner="w", lease_s=30)
    error = {"type": "ValueError", "message": "bad", "retryable": False, "traceback": "File /srv/app/task.py"}
    store.finish(job.id, owner="w", status=JobStatus.FAILED, error=error)
    # When a read key and an admin key read it, alone and in the listing
    for token, shown in ((READER, False), (WRITER, False), (ADMIN, True)):
        headers = {"Authorization": f"Bearer {token}"}
        one = client.simulate_get(f"/v1/jobs/{job.id}", headers=headers).json
        listed = client.simulate_get("/v1/jobs", headers=headers).json["items"][0]
        # Then type, message and retryable reach every reader; the traceback only admins
        for body in (one, listed):
            assert {k: body["error"][k] for k in ("type", "message", "retryable")} == {
                "type": "ValueError",
                "message": "bad",
                "retryable": False,
            }
            assert ("traceback" in body["error"]) is shown, (token, body["error"])


def test_a_jobs_attempts_are_listed_with_tracebacks_for_admin_keys_only(
    client: testing.TestClient, store: JobStore
) -> None:
    # Given a job whose first attempt failed and was retried, and whose second succeeded
    job = make_job()
    store.insert([job])
    error = {"type": "OSError", "message": "down", "retryable": True, "traceback": "File /srv/app/task.py"}
    for status, fields in ((JobStatus.RETRYING, {"error": error}), (JobStatus.SUCCEEDED, {"result": 1})):
        [claim], _ = store.commit_batch([ClaimRequest(job.id, "host:1", 30)], [])
        assert claim.job is not None
        end = FinishRequest(
            job.id, "host:1", status, attempt=claim.job.attempts, started_at=claim.job.started_at, **fields
        )
        store.commit_batch([], [end])
    # When a read key and an admin key read its attempts
    for token, shown in ((READER, False), (ADMIN, True)):
        body = client.simulate_get(f"/v1/jobs/{job.id}/attempts", headers={"Authorization": f"Bearer {token}"}).json
        # Then both attempts are listed in order, the traceback only for the admin
        assert [(a["attempt"], a["outcome"], a["worker"]) for a in body["items"]] == [
            (1, "retrying", "host:1"),
            (2, "succeeded", "host:1"),
        ]
        assert ("traceback" in body["items"][0]["error"]) is shown
        assert body["items"][0]["backoff_s"] is not None and body["items"][1]["duration_s"] is not None
    # An unknown job is a 404, as for GET /v1/jobs/{id}
    missing = client.simulate_get(f"/v1/jobs/{new_id()}/attempts")
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
