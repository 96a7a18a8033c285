"""Tenants: a key of a namespace sees, cancels and retries only its namespace's jobs (404 for the others),
its idempotency and uniqueness keys are its own, and jobs record which key submitted them."""

from __future__ import annotations

import time

import falcon.testing
import pytest
from prometheus_client import REGISTRY

from services.api.app import create_app
from shared.broker.publishing import build_broker
from shared.settings import Settings, parse_api_keys, parse_namespace_quotas
from shared.store.jobs import JobStore
from shared.store.tasks import TaskRegistry

ACME = "acmetoken-123456"
GLOBEX = "globextoken-123456"
OPS = "opstoken-1234567"
KEYS = f"acme:{ACME}:read+write:acme globex:{GLOBEX}:read+write:globex ops:{OPS}:admin"
ECHO = {"task": "diagnostics.echo", "args": {"message": "hi"}}


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


def test_paths_that_do_not_keep_to_a_namespace_refuse_its_keys(api: falcon.testing.TestClient) -> None:
    for method, path in [("GET", "/v1/queues"), ("GET", "/v1/schedules"), ("POST", "/v1/workflows")]:
        resp = api.simulate_request(method, path, headers=bearer(ACME), json={})
        assert resp.status_code == 403 and "namespace" in resp.json["detail"], path
    assert api.simulate_get("/v1/tasks", headers=bearer(ACME)).status_code == 200
    assert api.simulate_get("/v1/queues", headers=bearer(OPS)).status_code == 200


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
