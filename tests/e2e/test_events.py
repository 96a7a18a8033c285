"""Server-sent events under gunicorn's gevent worker: a job's stream follows it to its end, open streams do
not hold other requests up, and a stream over EVENTS_MAX_STREAMS is answered 503."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.e2e.conftest import Stack, start_stack, stop_stack

MAX_STREAMS = 2


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"API_WORKERS": "1", "EVENTS_MAX_STREAMS": str(MAX_STREAMS), "EVENTS_MAX_DURATION_S": "60"}
    started = start_stack(tmp_path_factory.mktemp("events"), env)
    try:
        yield started
    finally:
        assert stop_stack(started) == 0, started.log_path.read_text()[-4000:]


def open_stream(stack: Stack, path: str) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    parts = urlsplit(stack.base_url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    conn.request("GET", path, headers={"Authorization": f"Bearer {stack.token}", "Accept": "text/event-stream"})
    return conn, conn.getresponse()


def read_events(resp: http.client.HTTPResponse) -> Iterator[dict[str, Any]]:
    """The events of an open stream as they come (each ``data`` decoded), until the server ends it."""
    fields: dict[str, str] = {}
    for raw in resp:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if "data" in fields:
                yield {**fields, "data": json.loads(fields["data"])}
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value


def test_a_job_stream_follows_the_job_to_its_end(stack: Stack) -> None:
    status, job = stack.request("POST", "/v1/jobs", {"task": "diagnostics.sleep", "args": {"seconds": 1}})
    assert status == 202, job
    conn, resp = open_stream(stack, f"/v1/jobs/{job['id']}/events")
    try:
        assert resp.status == 200 and resp.getheader("Content-Type") == "text/event-stream"
        statuses = [event["data"]["status"] for event in read_events(resp)]
    finally:
        conn.close()
    # The stream ends by itself once the job is final, with the final state last
    assert statuses[-1] == "succeeded" and "running" in statuses
    assert statuses.count("succeeded") == 1


def test_open_streams_do_not_hold_other_requests_and_one_too_many_is_503(stack: Stack) -> None:
    # Given as many open queue streams as the API process serves
    opened = [open_stream(stack, "/v1/events?queue=default") for _ in range(MAX_STREAMS)]
    try:
        assert [resp.status for _, resp in opened] == [200] * MAX_STREAMS
        # Then other requests are answered meanwhile, and the streams see the job they make
        status, job = stack.request("POST", "/v1/jobs", {"task": "diagnostics.echo", "args": {"message": "hi"}})
        assert status == 202, job
        assert stack.request("GET", f"/v1/jobs/{job['id']}")[0] == 200
        for _, resp in opened:
            seen = next(event for event in read_events(resp) if event["data"]["id"] == job["id"])
            assert seen["event"] == "job"
        # And one more stream is refused with a problem naming the setting
        conn, resp = open_stream(stack, "/v1/events")
        try:
            assert resp.status == 503 and resp.getheader("Retry-After")
            assert "EVENTS_MAX_STREAMS" in json.loads(resp.read())["detail"]
        finally:
            conn.close()
    finally:
        for conn, _ in opened:
            conn.close()
