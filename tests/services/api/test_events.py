"""Server-sent events: the streams read on a real store, their polls driven by a fake sleep (no waiting),
then through the API: auth, namespaces, the stream limit, Last-Event-ID."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from falcon import testing

from services.api.app import create_app
from services.api.events import Streams, event_id, parse_event_id
from shared.broker.publishing import build_broker
from shared.job import Job, JobStatus
from shared.settings import Settings, parse_api_keys
from shared.store.jobs import JobStore
from shared.store.tasks import TaskRegistry
from tests.services.api.conftest import KEYS, WRITER
from tests.shared.store.test_jobs import make_job


def parse(chunks: Iterator[bytes] | bytes) -> list[dict[str, Any]]:
    """The events of a stream: each ``{"id", "event", "data"}``; comments and the retry field left out."""
    text = (chunks if isinstance(chunks, bytes) else b"".join(chunks)).decode()
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if "data" in fields:
            events.append({"id": fields["id"], "event": fields["event"], "data": json.loads(fields["data"])})
    return events


class Steps:
    """A stream's sleep that does the next step of the test instead of waiting."""

    def __init__(self, *steps: Callable[[], object]) -> None:
        self.steps = list(steps)
        self.clock_s = 0.0

    def sleep(self, seconds: float) -> None:
        self.clock_s += seconds
        if self.steps:
            self.steps.pop(0)()

    def clock(self) -> float:
        return self.clock_s


def streams(store: JobStore, steps: Steps, *, max_duration_s: float = 60.0) -> Streams:
    return Streams(store, 10, max_duration_s, poll_s=0.5, keepalive_s=2.0, clock=steps.clock, sleep=steps.sleep)


def test_a_job_stream_shows_each_change_and_ends_with_the_final_state(store: JobStore) -> None:
    job = make_job()
    store.insert([job])
    steps = Steps(
        lambda: store.claim(job.id, owner="w", lease_s=30),
        lambda: None,  # nothing changed: no event
        lambda: store.report_progress(job.id, {"current": 1, "total": 2}),
        lambda: store.finish(job.id, owner="w", status=JobStatus.SUCCEEDED, result="done"),
    )
    hub = streams(store, steps)
    hub.reserve()
    events = parse(hub.job_stream(job.id, None, traceback=False))
    half = {"current": 1, "total": 2}
    assert [(e["data"]["status"], e["data"]["progress"]) for e in events] == [
        ("queued", None), ("running", None), ("running", half), ("succeeded", half)
    ]  # fmt: skip
    assert all(e["event"] == "job" for e in events)
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    assert hub.open == 0


def test_a_job_stream_resumed_after_an_event_does_not_repeat_it(store: JobStore) -> None:
    job = make_job()
    store.insert([job])
    hub = streams(store, Steps(lambda: store.cancel(job.id)))
    hub.reserve()
    first = parse(hub.job_stream(job.id, parse_event_id(make_event_id(store, job.id)), traceback=False))
    assert [e["data"]["status"] for e in first] == ["cancelled"]


def make_event_id(store: JobStore, job_id: str) -> str:
    return event_id(store.get(job_id))


def test_a_quiet_stream_sends_keep_alive_comments_and_ends_at_its_duration(store: JobStore) -> None:
    job = make_job()
    store.insert([job])
    hub = streams(store, Steps(), max_duration_s=5.0)
    hub.reserve()
    chunks = list(hub.job_stream(job.id, None, traceback=False))
    assert chunks[0] == b"retry: 1000\n\n"
    assert chunks.count(b": keep-alive\n\n") == 2
    assert [e["data"]["status"] for e in parse(b"".join(chunks))] == ["queued"]
    assert hub.open == 0


def test_a_queue_stream_shows_the_changes_of_its_jobs_only(store: JobStore) -> None:
    made: dict[str, Job] = {}

    def submit() -> None:
        # Submitted after the stream opened (a stream shows changes from then on)
        made.update(mine=make_job(), other=make_job(namespace="team-b"), elsewhere=make_job(queue="emails"))
        store.insert(list(made.values()))

    steps = Steps(
        submit,
        lambda: store.claim(made["mine"].id, owner="w", lease_s=30),
        lambda: store.claim(made["elsewhere"].id, owner="w", lease_s=30),
        lambda: store.finish(made["mine"].id, owner="w", status=JobStatus.FAILED, error={"type": "E", "message": "m"}),
    )
    hub = streams(store, steps, max_duration_s=2.5)
    hub.reserve()
    events = parse(hub.queue_stream("default", None, None, traceback=False))
    mine, other = made["mine"].id, made["other"].id
    assert [(e["data"]["id"], e["data"]["status"]) for e in events] == [
        (mine, "queued"), (other, "queued"), (mine, "running"), (mine, "failed")
    ]  # fmt: skip


def test_a_queue_stream_of_a_namespace_shows_only_its_jobs(store: JobStore) -> None:
    made: list[Job] = []

    def submit() -> None:
        made.extend([make_job(namespace="team-a"), make_job(namespace="team-b")])
        store.insert(made)

    hub = streams(store, Steps(submit), max_duration_s=1.5)
    hub.reserve()
    events = parse(hub.queue_stream(None, "team-a", None, traceback=False))
    assert [e["data"]["id"] for e in events] == [made[0].id]


def test_a_stream_closed_before_it_started_gives_its_slot_back(store: JobStore) -> None:
    hub = streams(store, Steps())
    hub.reserve()
    hub.job_stream("nope", None, traceback=False).close()
    assert hub.open == 0


def test_event_ids_are_checked() -> None:
    assert parse_event_id(None) is None
    assert parse_event_id("1733390000123-01a24569-69f6-754e-b6cc-fb90e8830728") == (
        1733390000123, "01a24569-69f6-754e-b6cc-fb90e8830728"
    )  # fmt: skip
    for foreign in ("", "x", "12", "-abc", "12-XYZ", "1" * 17 + "-a", "1-a\n"):
        assert parse_event_id(foreign) is None


@pytest.fixture
def api(redis_url: str, store: JobStore, registry: TaskRegistry) -> Callable[..., testing.TestClient]:
    def make(**overrides: Any) -> testing.TestClient:
        keys = parse_api_keys(f"{KEYS} team:teamtoken-123456:read+write:team-a")
        settings = Settings(redis_url=redis_url, api_keys=keys, events_max_duration_s=1.0, **overrides)
        app = create_app(settings, store=store, registry=registry, broker=build_broker(redis_url))
        return testing.TestClient(app, headers={"Authorization": f"Bearer {WRITER}"})

    return make


def test_the_job_stream_route_answers_events_with_the_job_routes_auth(
    api: Callable[..., testing.TestClient], store: JobStore
) -> None:
    client = api()
    done = make_job(status=JobStatus.CANCELLED)
    store.insert([done])
    resp = client.simulate_get(f"/v1/jobs/{done.id}/events")
    assert resp.status_code == 200 and resp.headers["content-type"] == "text/event-stream"
    assert resp.headers["cache-control"] == "no-store"
    assert [e["data"]["id"] for e in parse(resp.content)] == [done.id]
    # Another namespace's key, no key, a bad Last-Event-ID, an unknown job
    team = {"Authorization": "Bearer teamtoken-123456"}
    assert client.simulate_get(f"/v1/jobs/{done.id}/events", headers=team).status_code == 404
    assert client.simulate_get(f"/v1/jobs/{done.id}/events", headers={"Authorization": ""}).status_code == 401
    # A Last-Event-ID this API did not write starts from now: the final job's one event
    foreign = client.simulate_get(f"/v1/jobs/{done.id}/events", headers={"Last-Event-ID": "nope"})
    assert foreign.status_code == 200 and len(parse(foreign.content)) == 1
    assert client.simulate_get("/v1/jobs/0193-none/events").status_code == 404
    assert client.simulate_get(f"/v1/jobs/{done.id}/events", params={"x": "1"}).status_code == 422


def test_the_events_route_checks_its_query_and_keeps_to_the_namespace(
    api: Callable[..., testing.TestClient], store: JobStore
) -> None:
    client = api()
    assert client.simulate_get("/v1/events", params={"queue": "Bad Name"}).status_code == 422
    assert client.simulate_get("/v1/events", params={"other": "x"}).status_code == 422
    resp = client.simulate_get(
        "/v1/events", params={"queue": "default"}, headers={"Authorization": "Bearer teamtoken-123456"}
    )
    assert resp.status_code == 200 and parse(resp.content) == []


def test_streams_over_the_limit_are_answered_503_with_retry_after(api: Callable[..., testing.TestClient]) -> None:
    client = api(events_max_streams=0)
    resp = client.simulate_get("/v1/events")
    assert resp.status_code == 503 and resp.headers["retry-after"]
    assert "EVENTS_MAX_STREAMS" in resp.json["detail"]
