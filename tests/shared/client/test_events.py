"""The clients' event streams against the real API over loopback: ``events()`` and ``wait()`` follow a job's
stream, resume after ``Last-Event-ID``, and ``wait()`` polls when the API cannot stream."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import make_server

import pytest

from services.api.app import create_app
from shared.broker.publishing import build_broker
from shared.client import ApiInvalidRequest
from shared.client.aio import AsyncClient
from shared.client.streams import StreamUnavailable
from shared.client.sync import Client
from shared.ids import new_id
from shared.redis_server import free_port
from shared.settings import Settings, parse_api_keys
from shared.store.jobs import JobStore
from shared.store.tasks import TaskRegistry
from tests.services.worker.conftest import Harness, harness, worker_settings  # noqa: F401
from tests.shared.client.test_client import KEYS, WRITER, _QuietHandler, _ThreadingServer

ECHO = {"message": "hi"}


@pytest.fixture
def serve(redis_url: str, store: JobStore, registry: TaskRegistry, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start the real app on a free loopback port with settings of the test's choosing; stopped at the end."""
    stops: list[Callable[[], None]] = []

    def start(**overrides: Any) -> str:
        settings = Settings(redis_url=redis_url, api_keys=parse_api_keys(KEYS), data_dir=tmp_path, **overrides)
        broker = build_broker(redis_url)
        app = create_app(settings, store=store, registry=registry, broker=broker)
        server = make_server("127.0.0.1", free_port(), app, server_class=_ThreadingServer, handler_class=_QuietHandler)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            broker.close()

        stops.append(stop)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for stop in stops:
        stop()


def test_events_follow_a_job_to_its_end_and_wait_returns_it(serve: Callable[..., str], harness: Harness) -> None:  # noqa: F811
    with Client(serve(), WRITER) as api:
        job = api.submit("diagnostics.echo", ECHO)
        statuses = [seen["status"] for seen in api.events(job["id"], timeout_s=30)]
        assert statuses[-1] == "succeeded" and statuses.count("succeeded") == 1
        updates: list[str] = []
        again = api.submit("diagnostics.echo", ECHO)
        done = api.wait(again["id"], timeout_s=30, on_update=lambda j: updates.append(j["status"]))
        assert done["status"] == "succeeded" and updates[-1] == "succeeded"


def test_events_resume_after_the_last_event_id_across_the_servers_ends(serve: Callable[..., str]) -> None:
    # Given streams that the server ends after a second, and a job waiting far ahead
    with Client(serve(events_max_duration_s=1.0), WRITER) as api:
        job = api.submit("diagnostics.echo", ECHO, delay_s=600)
        stream = api.events(job["id"], timeout_s=30)
        assert next(stream)["status"] == "scheduled"
        # When it is cancelled some streams later, the client sees that once, then the stream is over
        # NOTE: a delay, not a bound: the outcome is the same however late the cancel comes.
        cancel = threading.Timer(1.5, api.cancel, args=(job["id"],))
        cancel.start()
        assert [seen["status"] for seen in stream] == ["cancelled"]
        cancel.join()


def test_a_queue_stream_from_an_event_id_shows_the_jobs_changed_since(serve: Callable[..., str]) -> None:
    with Client(serve(), WRITER) as api:
        # An event id before anything below: the stream starts from there
        since = f"{0:013d}-{new_id()}"
        job = api.submit("diagnostics.echo", ECHO, queue="default", delay_s=600)
        seen = next(api.events(queue="default", last_event_id=since, timeout_s=30))
        assert seen["id"] == job["id"] and seen["status"] == "scheduled"
        with pytest.raises(ApiInvalidRequest) as caught:
            next(api.events(queue="Not A Queue"))
        assert caught.value.errors[0]["path"] == "/query/queue"


def test_events_end_at_the_timeout(serve: Callable[..., str]) -> None:
    with Client(serve(), WRITER) as api:
        job = api.submit("diagnostics.echo", ECHO, delay_s=600)
        assert [seen["status"] for seen in api.events(job["id"], timeout_s=1.0)] == ["scheduled"]


def test_wait_polls_when_the_api_cannot_stream(serve: Callable[..., str], harness: Harness) -> None:  # noqa: F811
    with Client(serve(events_max_streams=0), WRITER) as api:
        job = api.submit("diagnostics.echo", ECHO)
        with pytest.raises(StreamUnavailable):
            next(api.events(job["id"]))
        assert api.wait(job["id"], timeout_s=30, poll_s=0.05)["status"] == "succeeded"


def test_the_async_client_streams_and_waits(serve: Callable[..., str], harness: Harness) -> None:  # noqa: F811
    url = serve()

    async def scenario() -> None:
        async with AsyncClient(url, WRITER) as api:
            job = await api.submit("diagnostics.echo", ECHO)
            statuses = [seen["status"] async for seen in api.events(job["id"], timeout_s=30)]
            assert statuses[-1] == "succeeded"
            again = await api.submit("diagnostics.echo", ECHO)
            assert (await api.wait(again["id"], timeout_s=30))["status"] == "succeeded"

    asyncio.run(scenario())
