"""Unique jobs and debounce through ``POST /v1/jobs``: validation, the 200 answer and its header, the task's default."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from falcon import testing
from prometheus_client import REGISTRY

from shared.catalog import Catalog
from shared.job import JobStatus
from shared.store.jobs import JobStore
from shared.store.tasks import TaskRegistry

ECHO = {"task": "diagnostics.echo", "args": {"message": "hi"}}


def deduplicated(task: str = "diagnostics.echo") -> float:
    value = REGISTRY.get_sample_value("jobrelay_jobs_deduplicated_total", {"task": task, "queue": "default"})
    return value or 0.0


def test_a_unique_submission_returns_the_waiting_job(client: testing.TestClient, store: JobStore) -> None:
    counted = deduplicated()
    first = client.simulate_post("/v1/jobs", json={**ECHO, "unique_for_s": 60})
    assert first.status_code == 202 and "Jobrelay-Deduplicated" not in first.headers
    assert first.json["unique_key"] and first.json["unique_until"]
    # Same args in another order of keys: the same job, 200, saying why
    again = client.simulate_post("/v1/jobs", json={"args": {"message": "hi"}, "task": "diagnostics.echo",
                                                   "unique_for_s": 60})  # fmt: skip
    assert again.status_code == 200 and again.json["id"] == first.json["id"]
    assert again.headers["Jobrelay-Deduplicated"] == "unique"
    assert deduplicated() == counted + 1
    # Other args, or no uniqueness asked: new jobs
    other = client.simulate_post("/v1/jobs", json={**ECHO, "args": {"message": "ho"}, "unique_for_s": 60})
    plain = client.simulate_post("/v1/jobs", json=ECHO)
    assert other.status_code == 202 and plain.status_code == 202 and plain.json["unique_key"] is None
    # A given unique_key stands for the args
    keyed = client.simulate_post("/v1/jobs", json={**ECHO, "unique_for_s": 60, "unique_key": "customer-7"})
    keyed_again = client.simulate_post(
        "/v1/jobs", json={**ECHO, "args": {"message": "other"}, "unique_for_s": 60, "unique_key": "customer-7"}
    )
    assert keyed.status_code == 202 and keyed_again.status_code == 200 and keyed_again.json["id"] == keyed.json["id"]
    # Once the job is no longer waiting or running, the next submission adds one
    client.simulate_post(f"/v1/jobs/{first.json['id']}/cancel")
    after = client.simulate_post("/v1/jobs", json={**ECHO, "unique_for_s": 60})
    assert after.status_code == 202 and after.json["id"] != first.json["id"]


def test_concurrent_unique_submissions_make_one_job(client: testing.TestClient) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(
            pool.map(lambda _: client.simulate_post("/v1/jobs", json={**ECHO, "unique_for_s": 60}), range(16))
        )
    assert sorted(r.status_code for r in results) == [200] * 15 + [202]
    assert len({r.json["id"] for r in results}) == 1


def test_debounce_keeps_the_last_submission_of_a_burst(client: testing.TestClient, store: JobStore) -> None:
    burst = [client.simulate_post("/v1/jobs", json={**ECHO, "debounce_s": 30}) for _ in range(3)]
    assert [r.status_code for r in burst] == [202, 202, 202]
    last = store.get(burst[-1].json["id"])
    assert last.status is JobStatus.SCHEDULED and last.scheduled_for is not None
    for earlier in burst[:-1]:
        job = store.get(earlier.json["id"])
        assert job.status is JobStatus.CANCELLED and job.error is not None
        assert job.error["type"] == "Debounced"


def test_a_unique_key_alone_holds_while_the_job_waits_with_no_time_bound(client: testing.TestClient) -> None:
    # Given a job submitted with a unique_key and no window (the task declares none)
    first = client.simulate_post("/v1/jobs", json={**ECHO, "unique_key": "customer-9"})
    assert first.status_code == 202 and first.json["unique_key"] and first.json["unique_until"] is None
    # When the same key is submitted again while it waits, Then the waiting job is returned
    again = client.simulate_post("/v1/jobs", json={**ECHO, "args": {"message": "x"}, "unique_key": "customer-9"})
    assert again.status_code == 200 and again.json["id"] == first.json["id"]
    # And once it is no longer waiting, the key is free
    client.simulate_post(f"/v1/jobs/{first.json['id']}/cancel")
    after = client.simulate_post("/v1/jobs", json={**ECHO, "unique_key": "customer-9"})
    assert after.status_code == 202 and after.json["id"] != first.json["id"]


def test_bad_uniqueness_options_are_422_naming_the_field(client: testing.TestClient) -> None:
    cases = [
        ({"unique_for_s": 0}, "/unique_for_s"),
        ({"unique_for_s": "1"}, "/unique_for_s"),
        ({"debounce_s": -1}, "/debounce_s"),
        ({"unique_for_s": 5, "debounce_s": 5}, "/debounce_s"),
        ({"unique_for_s": 5, "unique_key": ""}, "/unique_key"),
        ({"unique_for_s": 5, "unique_key": 3}, "/unique_key"),
    ]
    for extra, path in cases:
        resp = client.simulate_post("/v1/jobs", json={**ECHO, **extra})
        assert resp.status_code == 422, extra
        assert path in [error["path"] for error in resp.json["errors"]], (extra, resp.json)


def test_workflow_steps_take_no_uniqueness(client: testing.TestClient) -> None:
    resp = client.simulate_post("/v1/workflows", json={"type": "group", "steps": [{**ECHO, "unique_for_s": 5}]})
    assert resp.status_code == 422
    assert resp.json["errors"][0]["path"] == "/steps/0/unique_for_s"


def test_the_task_default_applies_and_is_listed(client: testing.TestClient, registry: TaskRegistry) -> None:
    # Given a task declared unique for 60 s
    catalog = Catalog()

    @catalog.task(name="tests.unique_echo", unique_for_s=60)
    def unique_echo(message: str) -> str:
        return message

    registry.register(catalog.specs(), registered_by="tests")
    listed = {item["name"]: item for item in client.simulate_get("/v1/tasks").json["items"]}
    assert listed["tests.unique_echo"]["unique_for_s"] == 60 and listed["tests.unique_echo"]["debounce_s"] is None
    body = {"task": "tests.unique_echo", "args": {"message": "hi"}}
    first = client.simulate_post("/v1/jobs", json=body)
    again = client.simulate_post("/v1/jobs", json=body)
    assert first.status_code == 202 and again.status_code == 200 and again.json["id"] == first.json["id"]
    # A submission's own debounce_s takes the task's place
    debounced = client.simulate_post("/v1/jobs", json={**body, "debounce_s": 10})
    assert debounced.status_code == 202 and debounced.json["id"] != first.json["id"]
