"""Retry, queue stats and dead letters over HTTP, with a real worker failing real jobs."""

from __future__ import annotations

import time

import redis
from falcon import testing

from shared.broker.dead_letters import dead_letter_keys
from shared.broker.publishing import NAMESPACE
from shared.job import JobStatus
from tests.services.api.conftest import ADMIN, READER
from tests.services.worker.conftest import Harness, harness, worker_settings  # noqa: F401

ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
DEAD, DEAD_BODIES = dead_letter_keys(NAMESPACE, "default")


def fail_for_good(client: testing.TestClient, harness: Harness, n: int = 1) -> list[str]:  # noqa: F811
    ids = []
    for _ in range(n):
        resp = client.simulate_post("/v1/jobs", json={"task": "diagnostics.fail", "args": {}, "max_retries": 0})
        ids.append(resp.json["id"])
    for job_id in ids:
        assert harness.wait(job_id).status is JobStatus.FAILED
    return ids


def test_failed_job_is_listed_as_a_dead_letter_and_retried(
    client: testing.TestClient,
    harness: Harness,  # noqa: F811
    redis_client: redis.Redis,
) -> None:
    [job_id] = fail_for_good(client, harness)
    dead = client.simulate_get("/v1/queues/default/dead").json
    assert [j["id"] for j in dead["items"]] == [job_id]
    assert redis_client.zrange(DEAD, 0, -1) == [job_id.encode()] and redis_client.hexists(DEAD_BODIES, job_id)
    # When the job is retried
    resp = client.simulate_post(f"/v1/jobs/{job_id}/retry")
    assert resp.status_code == 202 and resp.json["status"] == "queued"
    # Then it runs again (attempts keep counting) and its dead letter was removed first
    again = harness.wait(job_id, until=lambda j: j.attempts == 2 and j.status.is_final)
    assert again.status is JobStatus.FAILED
    assert [j["id"] for j in client.simulate_get("/v1/queues/default/dead").json["items"]] == [job_id]


def test_retry_of_a_job_that_is_not_final_is_409(client: testing.TestClient) -> None:
    job_id = client.simulate_post("/v1/jobs", json={"task": "diagnostics.echo", "args": {"message": "x"}}).json["id"]
    resp = client.simulate_post(f"/v1/jobs/{job_id}/retry")
    assert resp.status_code == 409 and "queued" in resp.json["detail"]
    assert client.simulate_post("/v1/jobs/01a20c37-2245-7190-9508-c8914ae674fd/retry").status_code == 404


def test_requeue_by_ids_and_all_then_purge(
    client: testing.TestClient,
    harness: Harness,  # noqa: F811
    redis_client: redis.Redis,
) -> None:
    ids = fail_for_good(client, harness, 3)
    # Requeue needs admin
    assert client.simulate_post("/v1/queues/default/dead/requeue", json={"ids": ids[:1]}).status_code == 403
    resp = client.simulate_post("/v1/queues/default/dead/requeue", json={"ids": ids[:1]}, headers=ADMIN_HEADERS)
    assert resp.status_code == 202 and resp.json == {"requeued": 1}
    harness.wait(ids[0], until=lambda j: j.attempts == 2 and j.status.is_final)
    resp = client.simulate_post("/v1/queues/default/dead/requeue", json={"all": True}, headers=ADMIN_HEADERS)
    assert resp.json == {"requeued": 3}
    for job_id in ids:
        harness.wait(job_id, until=lambda j: j.dead and j.status.is_final)
    # Purge empties the dead-letter queue, in the store and in Redis
    resp = client.simulate_delete("/v1/queues/default/dead", headers=ADMIN_HEADERS)
    assert resp.json == {"purged": 3}
    assert client.simulate_get("/v1/queues/default/dead").json["items"] == []
    assert redis_client.zcard(DEAD) == 0 and redis_client.hlen(DEAD_BODIES) == 0


def test_requeue_body_is_validated(client: testing.TestClient) -> None:
    for body in ({}, {"ids": []}, {"ids": [1]}, {"all": False}, {"ids": ["a"], "all": True}):
        resp = client.simulate_post("/v1/queues/default/dead/requeue", json=body, headers=ADMIN_HEADERS)
        assert resp.status_code == 422, body


def test_queue_stats(client: testing.TestClient, redis_client: redis.Redis) -> None:
    for _ in range(2):
        client.simulate_post("/v1/jobs", json={"task": "diagnostics.echo", "args": {"message": "x"}})
    client.simulate_post("/v1/jobs", json={"task": "diagnostics.echo", "args": {"message": "x"}, "delay_s": 30})
    # NOTE: the grouped writer publishes after it answers: wait (bounded) for the three messages.
    deadline = time.monotonic() + 10
    while True:
        items = {
            q["name"]: q
            for q in client.simulate_get("/v1/queues", headers={"Authorization": f"Bearer {READER}"}).json["items"]
        }
        default = items["default"]
        if (default["depth"], default["delayed"]) == (2, 1) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert default["depth"] == 2 and default["delayed"] == 1 and default["in_progress"] == 0 and default["dead"] == 0
    assert default["oldest_age_s"] >= 0


def test_pause_and_resume_are_admin_only_idempotent_and_shown(
    client: testing.TestClient, redis_client: redis.Redis
) -> None:
    # read and write keys may not pause or resume
    assert client.simulate_post("/v1/queues/default/pause").status_code == 403
    reader = {"Authorization": f"Bearer {READER}"}
    assert client.simulate_post("/v1/queues/default/resume", headers=reader).status_code == 403
    # pausing twice keeps the first pause
    first = client.simulate_post("/v1/queues/default/pause", headers=ADMIN_HEADERS)
    again = client.simulate_post("/v1/queues/default/pause", headers=ADMIN_HEADERS)
    assert first.status_code == again.status_code == 200
    assert first.json["paused"] is True and again.json == first.json and first.json["name"] == "default"
    assert redis_client.exists("jobrelay:paused:default") == 1
    listed = {q["name"]: q["paused"] for q in client.simulate_get("/v1/queues").json["items"]}
    assert listed["default"] is True and not any(v for k, v in listed.items() if k != "default")
    # submissions are accepted while paused
    assert (
        client.simulate_post("/v1/jobs", json={"task": "diagnostics.echo", "args": {"message": "x"}}).status_code == 202
    )
    # resuming twice is fine too
    for _ in range(2):
        resumed = client.simulate_post("/v1/queues/default/resume", headers=ADMIN_HEADERS)
        assert resumed.status_code == 200 and resumed.json == {"name": "default", "paused": False, "paused_at": None}
    assert redis_client.exists("jobrelay:paused:default") == 0
    assert all(not q["paused"] for q in client.simulate_get("/v1/queues").json["items"])


def test_pausing_an_unknown_queue_is_404_naming_the_known_ones(client: testing.TestClient) -> None:
    for action in ("pause", "resume"):
        resp = client.simulate_post(f"/v1/queues/nope/{action}", headers=ADMIN_HEADERS)
        assert resp.status_code == 404
        assert "'nope'" in resp.json["detail"] and "default" in resp.json["detail"] and "emails" in resp.json["detail"]
