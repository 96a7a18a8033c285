"""Push on the real processes `jobrelay up` starts: a job or workflow submitted with a ``callback_url``
is POSTed its final state, signed, to a real HTTP server on loopback (CALLBACK_ALLOW_PRIVATE=on), a
receiver's 503 is retried, and the deliveries show on the job."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from services.worker.tasks.webhooks import DELIVERY_HEADER, SIGNATURE_HEADER, verify
from tests.e2e.conftest import Stack, start_stack, stop_stack

SECRET = "push-test-secret"
#: Longest wait for a delivery: the first retry of webhooks.deliver comes within 5 s (min_backoff_s).
DELIVERY_WAIT_S = 60.0


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """An HTTP server on loopback that records every POST and answers the status codes it is told, then 200."""

    def __init__(self) -> None:
        self.received: queue.Queue[Received] = queue.Queue()
        self.answers: dict[str, list[int]] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.received.put(Received(self.path, dict(self.headers.items()), body))
                planned = receiver.answers.get(self.path) or []
                code = planned.pop(0) if planned else 200
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def next(self, path: str) -> Received:
        while True:
            got = self.received.get(timeout=DELIVERY_WAIT_S)
            if got.path == path:
                return got

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    started = Receiver()
    try:
        yield started
    finally:
        started.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    started = start_stack(tmp_path_factory.mktemp("push"), {"WEBHOOK_SIGNING_SECRET": SECRET})
    try:
        yield started
    finally:
        assert stop_stack(started) == 0, started.log_path.read_text()[-4000:]


def _event(got: Received) -> dict[str, Any]:
    assert verify(SECRET.encode(), got.headers[SIGNATURE_HEADER], got.body)
    event: dict[str, Any] = json.loads(got.body)
    assert got.headers[DELIVERY_HEADER] == event["id"]
    return event


def test_a_finished_job_is_posted_signed_and_a_503_is_retried(stack: Stack, receiver: Receiver) -> None:
    # Given a receiver that answers 503 once, then 200
    receiver.answers["/succeeded"] = [503]
    body = {"task": "diagnostics.echo", "args": {"message": "pushed"}, "callback_url": receiver.url("/succeeded")}
    status, job = stack.request("POST", "/v1/jobs", body)
    assert status == 202, job
    # When the job succeeds, its final state is posted, signed; the 503 gets the same delivery again
    first, second = _event(receiver.next("/succeeded")), _event(receiver.next("/succeeded"))
    assert first == second
    assert first["type"] == "job.succeeded" and first["data"]["id"] == job["id"]
    assert first["data"]["result"] == "pushed"
    # Then the job shows the delivery: two attempts, delivered with 200
    assert stack.wait_job(first["id"], {"succeeded"}, timeout_s=30)["task"] == "webhooks.deliver"
    status, shown = stack.request("GET", f"/v1/jobs/{job['id']}")
    delivery = shown["callback_delivery"]
    assert delivery["job_id"] == first["id"] and delivery["status"] == "succeeded"
    assert delivery["attempts"] == 2 and delivery["status_code"] == 200 and delivery["delivered_at"]


def test_a_job_cancelled_through_the_api_is_posted(stack: Stack, receiver: Receiver) -> None:
    body = {"task": "diagnostics.echo", "args": {"message": "x"}, "delay_s": 600,
            "callback_url": receiver.url("/cancelled")}  # fmt: skip
    status, job = stack.request("POST", "/v1/jobs", body)
    assert status == 202, job
    assert stack.request("POST", f"/v1/jobs/{job['id']}/cancel")[0] == 202
    event = _event(receiver.next("/cancelled"))
    assert event["type"] == "job.cancelled" and event["data"]["id"] == job["id"]


def test_a_failed_job_and_a_failed_workflow_are_posted(stack: Stack, receiver: Receiver) -> None:
    failing = {"task": "diagnostics.fail", "args": {"message": "no"}, "max_retries": 0}
    status, job = stack.request("POST", "/v1/jobs", {**failing, "callback_url": receiver.url("/failed")})
    assert status == 202, job
    event = _event(receiver.next("/failed"))
    assert event["type"] == "job.failed" and event["data"]["error"]["message"]
    assert "traceback" not in event["data"]["error"]
    flow = {"type": "chain", "steps": [failing, {"task": "diagnostics.echo", "args": {"message": "never"}}],
            "callback_url": receiver.url("/workflow")}  # fmt: skip
    status, workflow = stack.request("POST", "/v1/workflows", flow)
    assert status == 202, workflow
    event = _event(receiver.next("/workflow"))
    assert event["type"] == "workflow.failed" and event["data"]["id"] == workflow["id"]
