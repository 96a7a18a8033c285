"""``callback_url`` through the API: the SSRF guard's 422, and the delivery shown on the job and workflow."""

from __future__ import annotations

import pytest
from falcon import testing
from sqlalchemy import Engine

from services.api.app import create_app
from services.scheduler.push import PushRelay
from shared.broker.publishing import build_broker
from shared.job import JobStatus
from shared.settings import Settings
from shared.store.jobs import JobFilter, JobStore
from shared.store.pushes import PushStore
from shared.store.tasks import TaskRegistry
from shared.submission.submitter import Submitter
from tests.services.api.conftest import WRITER

ECHO = {"task": "diagnostics.echo", "args": {"message": "hi"}}
PUBLIC = "https://93.184.215.14/hooks/jobs"


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/hook", "http://localhost/hook", "http://169.254.169.254/"])
def test_a_callback_url_into_the_network_is_refused_with_422_naming_the_field(
    client: testing.TestClient, store: JobStore, url: str
) -> None:
    resp = client.simulate_post("/v1/jobs", json={**ECHO, "callback_url": url})
    assert resp.status_code == 422, resp.text
    [error] = resp.json["errors"]
    assert error["path"] == "/callback_url" and "CALLBACK_ALLOW_PRIVATE" in error["message"]
    batch = client.simulate_post("/v1/jobs/batch", json={"jobs": [ECHO, {**ECHO, "callback_url": url}]})
    assert batch.status_code == 422 and batch.json["errors"][0]["path"] == "/jobs/1/callback_url"
    flow = client.simulate_post("/v1/workflows", json={"type": "group", "steps": [ECHO], "callback_url": url})
    assert flow.status_code == 422 and flow.json["errors"][0]["path"] == "/callback_url"
    assert store.page(JobFilter()).items == []


def test_a_public_callback_url_is_taken_and_shown(client: testing.TestClient) -> None:
    resp = client.simulate_post("/v1/jobs", json={**ECHO, "callback_url": PUBLIC})
    assert resp.status_code == 202, resp.text
    assert resp.json["callback_url"] == PUBLIC
    got = client.simulate_get(f"/v1/jobs/{resp.json['id']}")
    # Then nothing is delivered while it waits
    assert got.json["callback_url"] == PUBLIC and got.json["callback_delivery"] is None
    # A job without one has no callback_delivery at all
    plain = client.simulate_post("/v1/jobs", json=ECHO)
    assert "callback_delivery" not in client.simulate_get(f"/v1/jobs/{plain.json['id']}").json


@pytest.fixture
def open_client(settings: Settings, store: JobStore, registry: TaskRegistry) -> testing.TestClient:
    """The API with CALLBACK_ALLOW_PRIVATE=on."""
    broker = build_broker(settings.require_redis_url("tests"))
    opened = settings.with_overrides(callback_allow_private=True)
    app = create_app(opened, store=store, registry=registry, broker=broker)
    return testing.TestClient(app, headers={"Authorization": f"Bearer {WRITER}"})


def test_the_setting_allows_a_loopback_url_and_the_job_shows_its_delivery(
    open_client: testing.TestClient, settings: Settings, engine: Engine, store: JobStore, registry: TaskRegistry
) -> None:
    # Given a job with a loopback callback_url, accepted as CALLBACK_ALLOW_PRIVATE=on
    resp = open_client.simulate_post("/v1/jobs", json={**ECHO, "delay_s": 600, "callback_url": "http://127.0.0.1:9/x"})
    assert resp.status_code == 202, resp.text
    job_id = resp.json["id"]
    # When it is cancelled and the push relay runs
    assert open_client.simulate_post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    broker = build_broker(settings.require_redis_url("tests"))
    assert PushRelay(PushStore(engine), registry, Submitter(store, registry, broker)).run() == 1
    # Then the job shows its delivery job, waiting to be run
    delivery = open_client.simulate_get(f"/v1/jobs/{job_id}").json["callback_delivery"]
    assert delivery["status"] == "queued" and delivery["attempts"] == 0 and delivery["status_code"] is None
    # When a worker's attempt is refused by the receiver (the delivery task's own wording)
    assert store.claim(delivery["job_id"], owner="w", lease_s=30).job is not None
    error = {"type": "DeliveryRejected", "message": "receiver answered 410 Gone: bye", "retryable": False}
    assert store.finish(delivery["job_id"], owner="w", status=JobStatus.FAILED, error=error)
    # Then the job shows the attempt, the receiver's status and the error
    delivery = open_client.simulate_get(f"/v1/jobs/{job_id}").json["callback_delivery"]
    assert delivery["status"] == "failed" and delivery["attempts"] == 1
    assert delivery["status_code"] == 410 and delivery["error"] == error["message"]
    assert delivery["last_attempt_at"] is not None and delivery["delivered_at"] is None


def test_a_workflow_takes_a_callback_url_and_shows_its_delivery(
    open_client: testing.TestClient, settings: Settings, engine: Engine, store: JobStore, registry: TaskRegistry
) -> None:
    body = {"type": "chain", "steps": [{**ECHO, "delay_s": 600}, ECHO], "callback_url": "http://127.0.0.1:9/wf"}
    resp = open_client.simulate_post("/v1/workflows", json=body)
    assert resp.status_code == 202, resp.text
    assert resp.json["callback_url"] == body["callback_url"]
    flow_id = resp.json["id"]
    assert open_client.simulate_get(f"/v1/workflows/{flow_id}").json["callback_delivery"] is None
    assert open_client.simulate_post(f"/v1/workflows/{flow_id}/cancel").status_code == 202
    broker = build_broker(settings.require_redis_url("tests"))
    assert PushRelay(PushStore(engine), registry, Submitter(store, registry, broker)).run() == 1
    delivery = open_client.simulate_get(f"/v1/workflows/{flow_id}").json["callback_delivery"]
    assert delivery["status"] == "queued"
    payload = store.get(delivery["job_id"]).args["payload"]
    assert payload["type"] == "workflow.cancelled" and payload["data"]["id"] == flow_id
