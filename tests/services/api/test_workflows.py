"""Workflows over HTTP, run by a real worker: chain, group, chord, failure and cancel."""

from __future__ import annotations

import time

from falcon import testing

import tests.services.worker.tasks_for_tests  # noqa: F401 - registers testing.accumulate
from shared.job import JobStatus
from shared.store.jobs import JobFilter, JobStore
from tests.services.worker.conftest import Harness, harness, worker_settings  # noqa: F401


def step(add: float) -> dict:
    return {"task": "testing.accumulate", "args": {"add": add}}


def wait_workflow(client: testing.TestClient, workflow_id: str, timeout_s: float = 10) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        workflow = client.simulate_get(f"/v1/workflows/{workflow_id}").json
        if workflow["status"] != "running":
            return workflow
        assert time.monotonic() < deadline, workflow
        time.sleep(0.02)


def test_chain_passes_each_result_on(client: testing.TestClient, harness: Harness) -> None:  # noqa: F811
    resp = client.simulate_post("/v1/workflows", json={"type": "chain", "steps": [step(1), step(2), step(3)]})
    assert resp.status_code == 202 and resp.json["status"] == "running" and len(resp.json["jobs"]) == 3
    workflow = wait_workflow(client, resp.json["id"])
    assert workflow["status"] == "succeeded"
    results = [harness.store.get(job_id).result for job_id in workflow["jobs"]]
    assert results == [1, 3, 6]


def test_later_chain_steps_wait_unpublished(client: testing.TestClient, store: JobStore) -> None:
    resp = client.simulate_post("/v1/workflows", json={"type": "chain", "steps": [step(1), step(2)]})
    second = store.get(resp.json["jobs"][1])
    assert second.status is JobStatus.SCHEDULED and second.held and second.published_at is None
    assert second.workflow_id == resp.json["id"]


def test_chord_callback_gets_all_results(client: testing.TestClient, harness: Harness) -> None:  # noqa: F811
    body = {"type": "chord", "steps": [step(1), step(2), step(4)], "callback": step(10)}
    resp = client.simulate_post("/v1/workflows", json=body)
    workflow = wait_workflow(client, resp.json["id"])
    assert workflow["status"] == "succeeded"
    assert harness.store.get(workflow["callback_job"]).result == 17


def test_group_succeeds_when_all_do(client: testing.TestClient, harness: Harness) -> None:  # noqa: F811
    resp = client.simulate_post("/v1/workflows", json={"type": "group", "steps": [step(1), step(2)]})
    assert wait_workflow(client, resp.json["id"])["status"] == "succeeded"


def test_failed_step_fails_the_chain_and_cancels_the_rest(
    client: testing.TestClient,
    harness: Harness,  # noqa: F811
) -> None:
    failing = {"task": "diagnostics.fail", "args": {}, "max_retries": 0}
    resp = client.simulate_post("/v1/workflows", json={"type": "chain", "steps": [step(1), failing, step(2)]})
    workflow = wait_workflow(client, resp.json["id"])
    assert workflow["status"] == "failed"
    statuses = [harness.store.get(job_id).status for job_id in workflow["jobs"]]
    assert statuses == [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED]


def test_failed_step_means_the_chord_callback_never_runs(
    client: testing.TestClient,
    harness: Harness,  # noqa: F811
) -> None:
    failing = {"task": "diagnostics.fail", "args": {}, "max_retries": 0}
    resp = client.simulate_post(
        "/v1/workflows", json={"type": "chord", "steps": [step(1), failing], "callback": step(0)}
    )
    workflow = wait_workflow(client, resp.json["id"])
    assert workflow["status"] == "failed"
    callback = harness.store.get(workflow["callback_job"])
    assert callback.status is JobStatus.CANCELLED and callback.attempts == 0


def test_cancel_a_workflow(client: testing.TestClient, store: JobStore) -> None:
    resp = client.simulate_post("/v1/workflows", json={"type": "chain", "steps": [step(1), step(2)]})
    cancelled = client.simulate_post(f"/v1/workflows/{resp.json['id']}/cancel")
    assert cancelled.status_code == 202 and cancelled.json["status"] == "cancelled"
    assert {store.get(job_id).status for job_id in resp.json["jobs"]} == {JobStatus.CANCELLED}
    assert client.simulate_post(f"/v1/workflows/{resp.json['id']}/cancel").status_code == 409


def test_workflow_validation_names_each_problem_and_stores_nothing(client: testing.TestClient, store: JobStore) -> None:
    body = {"type": "chord", "steps": [step(1), {"task": "testing.accumulate", "args": {}}], "extra": 1}
    resp = client.simulate_post("/v1/workflows", json=body)
    assert resp.status_code == 422
    assert {e["path"] for e in resp.json["errors"]} == {"/extra", "/callback", "/steps/1/args/add"}
    assert store.page(JobFilter()).items == []
    assert client.simulate_get("/v1/workflows/01a20c37-2245-7190-9508-c8914ae674fd").status_code == 404


def test_a_workflow_left_behind_by_a_dead_worker_is_moved_on(client: testing.TestClient, store: JobStore) -> None:
    from shared.broker.publishing import build_broker
    from shared.store.tasks import TaskRegistry
    from shared.store.workflows import WorkflowStore
    from shared.workflows import WorkflowEngine

    # Given a chain whose first step was recorded succeeded by a worker that died before advancing it
    resp = client.simulate_post("/v1/workflows", json={"type": "chain", "steps": [step(1), step(2)]})
    first, second = resp.json["jobs"]
    store.claim(first, owner="dead", lease_s=30)
    store.finish(first, owner="dead", status=JobStatus.SUCCEEDED, result=1)
    assert store.get(second).held
    # When the scheduler's housekeeping looks at workflows that have not moved
    engine = WorkflowEngine(
        WorkflowStore(store.engine), store, TaskRegistry(store.engine), build_broker("redis://127.0.0.1:1/0")
    )
    assert engine.advance_stale(older_than_s=0) == 1
    # Then the next step is released with its input
    released = store.get(second)
    assert not released.held and released.status is JobStatus.QUEUED and released.args["input"] == 1
