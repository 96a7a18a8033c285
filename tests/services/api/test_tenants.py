"""Tenants: a key of a namespace sees, cancels and retries only its namespace's jobs, workflows, schedules
and dead letters (404 for the others), its idempotency and uniqueness keys and schedule ids are its own,
and jobs record which key submitted them."""

from __future__ import annotations

import time

import falcon.testing
import pytest
import redis
from prometheus_client import REGISTRY

from services.api.app import create_app
from shared.broker.dead_letters import dead_letter_keys
from shared.broker.publishing import NAMESPACE, build_broker
from shared.job import JobStatus
from shared.settings import Settings, parse_api_keys, parse_namespace_quotas
from shared.store.jobs import JobStore
from shared.store.tasks import TaskRegistry
from tests.services.worker.conftest import Harness, harness, worker_settings  # noqa: F401

ACME = "acmetoken-123456"
ACME_ADMIN = "acmeadmintoken-123456"
GLOBEX = "globextoken-123456"
GLOBEX_ADMIN = "globexadmintoken-123456"
OPS = "opstoken-1234567"
KEYS = (
    f"acme:{ACME}:read+write:acme globex:{GLOBEX}:read+write:globex ops:{OPS}:admin "
    f"acme-admin:{ACME_ADMIN}:admin:acme globex-admin:{GLOBEX_ADMIN}:admin:globex"
)
ECHO = {"task": "diagnostics.echo", "args": {"message": "hi"}}
NIGHTLY = {"id": "nightly", "task": "diagnostics.echo", "args": {"message": "good night"}, "cron": "0 2 * * *"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def api(redis_url: str, store: JobStore, registry: TaskRegistry) -> falcon.testing.TestClient:
    settings = Settings(redis_url=redis_url, api_keys=parse_api_keys(KEYS))
    broker = build_broker(settings.require_redis_url("tests"))
    return falcon.testing.TestClient(create_app(settings, store=store, registry=registry, broker=broker))


def test_a_namespace_sees_only_its_own_jobs(api: falcon.testing.TestClient) -> None:
    # Given a job of each tenant
    mine = api.simulate_post("/v1/jobs", json=ECHO, headers=bearer(ACME))
    theirs = api.simulate_post("/v1/jobs", json=ECHO, headers=bearer(GLOBEX))
    assert mine.status_code == theirs.status_code == 202
    assert mine.json["namespace"] == "acme" and mine.json["submitted_by"] == "acme"
    other_id = theirs.json["id"]
    # Then acme gets 404 for globex's job on every path, as for an unknown id
    for method, path in [
        ("GET", f"/v1/jobs/{other_id}"),
        ("GET", f"/v1/jobs/{other_id}/result"),
        ("POST", f"/v1/jobs/{other_id}/cancel"),
        ("POST", f"/v1/jobs/{other_id}/retry"),
    ]:
        resp = api.simulate_request(method, path, headers=bearer(ACME))
        assert resp.status_code == 404, (method, path)
    assert api.simulate_get(f"/v1/jobs/{other_id}", headers=bearer(GLOBEX)).json["status"] == "queued"
    # And its list holds its own jobs only; a key without a namespace sees all, as before
    listed = api.simulate_get("/v1/jobs", headers=bearer(ACME)).json["items"]
    assert [job["id"] for job in listed] == [mine.json["id"]]
    everyone = api.simulate_get("/v1/jobs", headers=bearer(OPS)).json["items"]
    assert {job["id"] for job in everyone} == {mine.json["id"], other_id}
    # And it may cancel its own
    assert api.simulate_post(f"/v1/jobs/{mine.json['id']}/cancel", headers=bearer(ACME)).status_code == 202


def test_idempotency_and_uniqueness_keys_are_per_namespace(api: falcon.testing.TestClient) -> None:
    headers = {"Idempotency-Key": "order-1"}
    acme = api.simulate_post("/v1/jobs", json=ECHO, headers={**bearer(ACME), **headers})
    globex = api.simulate_post("/v1/jobs", json=ECHO, headers={**bearer(GLOBEX), **headers})
    again = api.simulate_post("/v1/jobs", json=ECHO, headers={**bearer(ACME), **headers})
    assert acme.status_code == globex.status_code == 202 and acme.json["id"] != globex.json["id"]
    assert again.status_code == 200 and again.json["id"] == acme.json["id"]
    unique = {**ECHO, "unique_for_s": 60}
    first = api.simulate_post("/v1/jobs", json=unique, headers=bearer(ACME))
    other = api.simulate_post("/v1/jobs", json=unique, headers=bearer(GLOBEX))
    assert first.status_code == other.status_code == 202
    assert api.simulate_post("/v1/jobs", json=unique, headers=bearer(ACME)).json["id"] == first.json["id"]


def test_a_batch_is_submitted_into_the_namespace(api: falcon.testing.TestClient) -> None:
    resp = api.simulate_post("/v1/jobs/batch", json={"jobs": [ECHO, ECHO]}, headers=bearer(GLOBEX))
    assert resp.status_code == 202
    assert {job["namespace"] for job in resp.json["jobs"]} == {"globex"}


def test_the_shared_queues_refuse_a_namespaced_key(api: falcon.testing.TestClient) -> None:
    # Queues are every namespace's: their stats and pausing are the operator's
    for method, path in [("GET", "/v1/queues"), ("POST", "/v1/queues/default/pause")]:
        resp = api.simulate_request(method, path, headers=bearer(ACME_ADMIN), json={})
        assert resp.status_code == 403 and "namespace" in resp.json["detail"], path
    assert api.simulate_get("/v1/tasks", headers=bearer(ACME)).status_code == 200
    assert api.simulate_get("/v1/queues", headers=bearer(OPS)).status_code == 200


def test_a_workflow_lives_in_its_namespace(api: falcon.testing.TestClient) -> None:
    # Given a group submitted by acme
    resp = api.simulate_post("/v1/workflows", json={"type": "group", "steps": [ECHO, ECHO]}, headers=bearer(ACME))
    assert resp.status_code == 202 and resp.json["namespace"] == "acme"
    workflow_id, step_ids = resp.json["id"], resp.json["jobs"]
    # Then its steps are acme's jobs, submitted by its key
    for job_id in step_ids:
        step = api.simulate_get(f"/v1/jobs/{job_id}", headers=bearer(ACME)).json
        assert (step["namespace"], step["submitted_by"], step["workflow_id"]) == ("acme", "acme", workflow_id)
    # And globex gets 404 for it, to read or to cancel, as for an unknown id
    for method, path in [("GET", f"/v1/workflows/{workflow_id}"), ("POST", f"/v1/workflows/{workflow_id}/cancel")]:
        refused = api.simulate_request(method, path, headers=bearer(GLOBEX))
        assert refused.status_code == 404 and refused.json["detail"] == f"no workflow with id {workflow_id!r}"
    assert api.simulate_get(f"/v1/jobs/{step_ids[0]}", headers=bearer(GLOBEX)).status_code == 404
    # While acme and the operator read it, and acme cancels it
    assert api.simulate_get(f"/v1/workflows/{workflow_id}", headers=bearer(OPS)).json["namespace"] == "acme"
    cancelled = api.simulate_post(f"/v1/workflows/{workflow_id}/cancel", headers=bearer(ACME))
    assert cancelled.status_code == 202 and cancelled.json["status"] == "cancelled"


def test_a_workflow_counts_against_its_namespace_quota(redis_url: str, store: JobStore, registry: TaskRegistry) -> None:
    api = quota_client(redis_url, store, registry, "acme:2:-")
    over = api.simulate_post("/v1/workflows", json={"type": "group", "steps": [ECHO] * 3}, headers=bearer(ACME))
    assert over.status_code == 429 and over.headers["Retry-After"] == "5"
    assert api.simulate_get("/v1/jobs", headers=bearer(ACME)).json["items"] == []
    fits = api.simulate_post("/v1/workflows", json={"type": "group", "steps": [ECHO] * 2}, headers=bearer(ACME))
    assert fits.status_code == 202


def test_schedule_ids_are_per_namespace(api: falcon.testing.TestClient) -> None:
    # Given acme's and globex's schedule, both named "nightly" by their keys
    acme = api.simulate_post("/v1/schedules", json=NIGHTLY, headers=bearer(ACME_ADMIN))
    assert acme.status_code == 201 and acme.headers["Location"] == "/v1/schedules/nightly"
    assert (acme.json["id"], acme.json["namespace"]) == ("nightly", "acme")
    globex_body = {**NIGHTLY, "args": {"message": "globex"}}
    globex = api.simulate_post("/v1/schedules", json=globex_body, headers=bearer(GLOBEX_ADMIN))
    assert globex.status_code == 201 and globex.json["id"] == "nightly"
    again = api.simulate_post("/v1/schedules", json=NIGHTLY, headers=bearer(ACME_ADMIN))
    assert again.status_code == 409
    # Then each key lists and reads its own only; the operator sees both under their stored ids
    listed = api.simulate_get("/v1/schedules", headers=bearer(ACME)).json["items"]
    assert [(s["id"], s["args"]) for s in listed] == [("nightly", NIGHTLY["args"])]
    assert api.simulate_get("/v1/schedules/nightly", headers=bearer(GLOBEX)).json["args"] == {"message": "globex"}
    everyone = {s["id"]: s["namespace"] for s in api.simulate_get("/v1/schedules", headers=bearer(OPS)).json["items"]}
    assert everyone == {"acme:nightly": "acme", "globex:nightly": "globex"}
    # And another namespace's stored id is a 404 to a key, whatever the method
    for method in ("GET", "PUT", "DELETE"):
        resp = api.simulate_request(method, "/v1/schedules/acme:nightly", headers=bearer(GLOBEX_ADMIN), json={})
        assert resp.status_code == 404 and "acme" in resp.json["detail"], method
    assert api.simulate_post("/v1/schedules/acme:nightly/trigger", headers=bearer(GLOBEX_ADMIN)).status_code == 404
    # And a change, sent back with its id as shown, keeps it in its namespace
    changed = api.simulate_put(
        "/v1/schedules/nightly", json={**acme.json, "enabled": False}, headers=bearer(ACME_ADMIN)
    )
    assert changed.status_code == 200 and (changed.json["id"], changed.json["enabled"]) == ("nightly", False)
    assert api.simulate_get("/v1/schedules/nightly", headers=bearer(GLOBEX)).json["enabled"] is True
    # And deleting acme's leaves globex's
    assert api.simulate_delete("/v1/schedules/nightly", headers=bearer(ACME_ADMIN)).status_code == 204
    assert api.simulate_get("/v1/schedules/nightly", headers=bearer(ACME)).status_code == 404
    assert api.simulate_get("/v1/schedules/nightly", headers=bearer(GLOBEX)).status_code == 200


def test_a_triggered_schedule_job_is_in_its_namespace(api: falcon.testing.TestClient) -> None:
    assert api.simulate_post("/v1/schedules", json=NIGHTLY, headers=bearer(ACME_ADMIN)).status_code == 201
    fired = api.simulate_post("/v1/schedules/nightly/trigger", headers=bearer(ACME_ADMIN))
    assert fired.status_code == 202
    assert (fired.json["namespace"], fired.json["schedule_id"]) == ("acme", "nightly")
    # The key finds it by its schedule id; the operator sees the stored one
    listed = api.simulate_get("/v1/jobs", params={"schedule_id": "nightly"}, headers=bearer(ACME)).json["items"]
    assert [job["id"] for job in listed] == [fired.json["id"]]
    assert api.simulate_get(f"/v1/jobs/{fired.json['id']}", headers=bearer(OPS)).json["schedule_id"] == "acme:nightly"
    assert api.simulate_get(f"/v1/jobs/{fired.json['id']}", headers=bearer(GLOBEX)).status_code == 404


def fail_for_good(api: falcon.testing.TestClient, harness: Harness, token: str, n: int) -> list[str]:  # noqa: F811
    body = {"task": "diagnostics.fail", "args": {}, "max_retries": 0}
    ids = [api.simulate_post("/v1/jobs", json=body, headers=bearer(token)).json["id"] for _ in range(n)]
    for job_id in ids:
        assert harness.wait(job_id).status is JobStatus.FAILED
    return ids


def test_dead_letters_are_per_namespace(
    api: falcon.testing.TestClient,
    harness: Harness,  # noqa: F811
    redis_client: redis.Redis,
) -> None:
    # Given two dead letters of acme's and one of globex's on the same queue
    mine = fail_for_good(api, harness, ACME, 2)
    [theirs] = fail_for_good(api, harness, GLOBEX, 1)
    # Then each key lists its own; the operator all three
    listed = api.simulate_get("/v1/queues/default/dead", headers=bearer(ACME)).json["items"]
    assert sorted(job["id"] for job in listed) == sorted(mine)
    everyone = api.simulate_get("/v1/queues/default/dead", headers=bearer(OPS)).json["items"]
    assert sorted(job["id"] for job in everyone) == sorted([*mine, theirs])
    # And acme cannot requeue globex's, by id or by "all"
    by_id = api.simulate_post("/v1/queues/default/dead/requeue", json={"ids": [theirs]}, headers=bearer(ACME_ADMIN))
    assert by_id.status_code == 202 and by_id.json == {"requeued": 0}
    every = api.simulate_post("/v1/queues/default/dead/requeue", json={"all": True}, headers=bearer(ACME_ADMIN))
    assert every.json == {"requeued": 2}
    for job_id in mine:
        harness.wait(job_id, until=lambda j: j.attempts == 2 and j.dead and j.status.is_final)
    assert api.simulate_get(f"/v1/jobs/{theirs}", headers=bearer(GLOBEX)).json["attempts"] == 1
    # And its purge takes only its own out of the dead-letter queue
    purged = api.simulate_delete("/v1/queues/default/dead", headers=bearer(ACME_ADMIN))
    assert purged.json == {"purged": 2}
    assert api.simulate_get("/v1/queues/default/dead", headers=bearer(ACME)).json["items"] == []
    left = api.simulate_get("/v1/queues/default/dead", headers=bearer(GLOBEX)).json["items"]
    assert [job["id"] for job in left] == [theirs]
    assert redis_client.zrange(dead_letter_keys(NAMESPACE, "default")[0], 0, -1) == [theirs.encode()]


def test_a_namespaced_key_cannot_open_the_console(redis_url: str, store: JobStore, registry: TaskRegistry) -> None:
    from tests.services.api.console.conftest import Browser

    settings = Settings(redis_url=redis_url, api_keys=parse_api_keys(KEYS))
    app = create_app(settings, store=store, registry=registry, broker=build_broker(redis_url))
    browser = Browser(falcon.testing.TestClient(app))
    result = browser.login(ACME)
    assert result.status_code == 403 and "namespace" in result.text and not browser.cookies
    assert Browser(falcon.testing.TestClient(app)).login(OPS).status_code == 303


def quota_client(redis_url: str, store: JobStore, registry: TaskRegistry, quotas: str) -> falcon.testing.TestClient:
    settings = Settings(
        redis_url=redis_url, api_keys=parse_api_keys(KEYS), namespace_quotas=parse_namespace_quotas(quotas)
    )
    app = create_app(settings, store=store, registry=registry, broker=build_broker(redis_url))
    return falcon.testing.TestClient(app)


def test_a_namespace_over_its_waiting_quota_gets_429(redis_url: str, store: JobStore, registry: TaskRegistry) -> None:
    api = quota_client(redis_url, store, registry, "acme:3:-")
    refused = REGISTRY.get_sample_value("jobrelay_jobs_rejected_total", {"reason": "over_quota"}) or 0.0
    # Given acme with 3 jobs waiting (its quota)
    batch = api.simulate_post("/v1/jobs/batch", json={"jobs": [ECHO] * 3}, headers=bearer(ACME))
    assert batch.status_code == 202
    # When it submits one more, or a batch that would go over: 429 with Retry-After, nothing stored
    over = api.simulate_post("/v1/jobs", json=ECHO, headers=bearer(ACME))
    assert over.status_code == 429 and over.headers["Retry-After"] == "5" and "acme" in over.json["detail"]
    assert api.simulate_post("/v1/jobs/batch", json={"jobs": [ECHO]}, headers=bearer(ACME)).status_code == 429
    assert len(api.simulate_get("/v1/jobs", headers=bearer(ACME)).json["items"]) == 3
    assert REGISTRY.get_sample_value("jobrelay_jobs_rejected_total", {"reason": "over_quota"}) == refused + 2
    # Then another namespace, and a key without one, are not held back
    assert api.simulate_post("/v1/jobs", json=ECHO, headers=bearer(GLOBEX)).status_code == 202
    assert api.simulate_post("/v1/jobs", json=ECHO, headers=bearer(OPS)).status_code == 202
    # And once a job no longer waits, acme may submit again
    first = batch.json["jobs"][0]["id"]
    assert api.simulate_post(f"/v1/jobs/{first}/cancel", headers=bearer(ACME)).status_code == 202
    assert api.simulate_post("/v1/jobs", json=ECHO, headers=bearer(ACME)).status_code == 202


def test_a_namespace_over_its_rate_gets_429_with_retry_after(
    redis_url: str, store: JobStore, registry: TaskRegistry
) -> None:
    api = quota_client(redis_url, store, registry, "globex:-:5")
    # A batch of 6 is over 5 a second whatever second it falls in
    over = api.simulate_post("/v1/jobs/batch", json={"jobs": [ECHO] * 6}, headers=bearer(GLOBEX))
    assert over.status_code == 429 and over.headers["Retry-After"] == "1"
    assert api.simulate_get("/v1/jobs", headers=bearer(GLOBEX)).json["items"] == []
    # Within a later second, 5 pass (retried until a second starts fresh: the refused batch counted)
    deadline = time.monotonic() + 10
    while True:
        ok = api.simulate_post("/v1/jobs/batch", json={"jobs": [ECHO] * 5}, headers=bearer(GLOBEX))
        if ok.status_code == 202 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert ok.status_code == 202
