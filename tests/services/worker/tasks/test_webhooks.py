"""``webhooks.deliver`` against a real HTTP server on loopback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from services.worker.context import JobContext
from services.worker.retry_policy import Retry, decide
from services.worker.tasks.webhooks import (
    DeliveryFailed,
    DeliveryRejected,
    InvalidWebhook,
    deliver,
    retry_after_s,
    verify,
)
from shared.catalog import default_catalog
from shared.settings import Settings

SECRET = "whsec-test-0123456789"
TaskEnv = Callable[..., Settings]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """What the server answers next, and what it was sent."""

    url: str = ""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b'{"ok":true}'
    delay_s: float = 0.0
    received: list[Received] = field(default_factory=list)


@pytest.fixture
def receiver(task_env: TaskEnv) -> Iterator[Receiver]:
    script = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            script.received.append(Received(self.path, dict(self.headers), body))
            time.sleep(script.delay_s)
            self.send_response(script.status)
            for name, value in script.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(script.body)))
            self.end_headers()
            self.wfile.write(script.body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    script.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/jobs"
    task_env(WEBHOOK_SIGNING_SECRET=SECRET)
    yield script
    server.shutdown()
    server.server_close()


def _retried(exc: BaseException) -> bool:
    return decide(default_catalog.get("webhooks.deliver"), exc, attempts=1, max_retries=10).retry


def test_delivery_is_signed_and_carries_the_job_id(receiver: Receiver, job: JobContext) -> None:
    payload = {"event": "job.succeeded", "id": job.job_id, "data": {"rows": 3, "name": "café"}}
    result = deliver(url=receiver.url, payload=payload, headers={"X-Tenant": "acme"})
    [got] = receiver.received
    assert got.path == "/hooks/jobs" and json.loads(got.body) == payload
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["X-Tenant"] == "acme"
    assert got.headers["X-Jobrelay-Delivery"] == job.job_id
    signature = got.headers["X-Jobrelay-Signature"]
    assert verify(SECRET.encode(), signature, got.body)
    assert not verify(b"another secret", signature, got.body)
    assert not verify(SECRET.encode(), signature, got.body + b" ")
    assert not verify(SECRET.encode(), signature, got.body, now=time.time() + 3600)
    assert result["status"] == 200 and result["delivery"] == job.job_id and result["response"] == '{"ok":true}'


def test_a_retry_carries_the_same_delivery_id(receiver: Receiver, job: JobContext) -> None:
    deliver(url=receiver.url, payload={"n": 1})
    job.attempt = 2
    deliver(url=receiver.url, payload={"n": 1})
    first, second = receiver.received
    assert first.headers["X-Jobrelay-Delivery"] == second.headers["X-Jobrelay-Delivery"] == job.job_id
    assert second.headers["X-Jobrelay-Attempt"] == "2"


def test_server_error_is_retried(receiver: Receiver, job: JobContext) -> None:
    receiver.status, receiver.body = 500, b"database down"
    with pytest.raises(DeliveryFailed, match="500") as caught:
        deliver(url=receiver.url, payload={})
    assert "database down" in str(caught.value)
    assert _retried(caught.value)


def test_too_many_requests_honours_retry_after(receiver: Receiver, job: JobContext) -> None:
    receiver.status, receiver.headers = 429, {"Retry-After": "42"}
    with pytest.raises(Retry) as caught:
        deliver(url=receiver.url, payload={})
    assert caught.value.after_s == 42
    decision = decide(default_catalog.get("webhooks.deliver"), caught.value, attempts=1, max_retries=10)
    assert decision.retry and decision.delay_s == 42


def test_retry_after_as_an_http_date() -> None:
    now = time.time()
    assert retry_after_s(formatdate(now + 120, usegmt=True), now=now) == pytest.approx(120, abs=1)
    assert retry_after_s("not a date") is None and retry_after_s(None) is None
    assert retry_after_s("999999") == 3600


def test_client_error_is_not_retried(receiver: Receiver, job: JobContext) -> None:
    receiver.status = 404
    with pytest.raises(DeliveryRejected, match="404") as caught:
        deliver(url=receiver.url, payload={})
    assert not _retried(caught.value)


def test_redirect_is_not_followed(receiver: Receiver, job: JobContext) -> None:
    receiver.status, receiver.headers = 307, {"Location": "http://127.0.0.1:1/elsewhere"}
    with pytest.raises(DeliveryRejected, match="307"):
        deliver(url=receiver.url, payload={})
    assert len(receiver.received) == 1


def test_slow_server_times_out_and_is_retried(receiver: Receiver, job: JobContext) -> None:
    receiver.delay_s = 1.0
    started = time.monotonic()
    with pytest.raises(DeliveryFailed, match=r"[Tt]imeout|timed out") as caught:
        deliver(url=receiver.url, payload={}, timeout_s=0.2)
    assert time.monotonic() - started < 0.9
    assert _retried(caught.value)


def test_nobody_listening_is_retried(job: JobContext, task_env: TaskEnv) -> None:
    from shared.redis_server import free_port

    task_env(WEBHOOK_SIGNING_SECRET=SECRET)
    with pytest.raises(DeliveryFailed) as caught:
        deliver(url=f"http://127.0.0.1:{free_port()}/", payload={})
    assert _retried(caught.value)


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "http:///nohost", "example.com"])
def test_only_http_urls_are_accepted(url: str, job: JobContext, task_env: TaskEnv) -> None:
    task_env(WEBHOOK_SIGNING_SECRET=SECRET)
    with pytest.raises(InvalidWebhook) as caught:
        deliver(url=url, payload={})
    assert not _retried(caught.value)


@pytest.mark.parametrize(
    "headers", [{"X-Jobrelay-Signature": "forged"}, {"Content-Type": "text/plain"}, {"X-Evil": "a\r\nHost: b"}]
)
def test_reserved_or_malformed_headers_are_refused(
    headers: dict[str, str], receiver: Receiver, job: JobContext
) -> None:
    with pytest.raises(InvalidWebhook):
        deliver(url=receiver.url, payload={}, headers=headers)
    assert receiver.received == []


def test_no_secret_means_no_delivery(receiver: Receiver, job: JobContext, task_env: TaskEnv) -> None:
    task_env(WEBHOOK_SIGNING_SECRET="")
    with pytest.raises(InvalidWebhook, match="WEBHOOK_SIGNING_SECRET"):
        deliver(url=receiver.url, payload={})
    assert receiver.received == []


def test_the_secret_comes_from_the_settings_not_the_environment(
    receiver: Receiver, job: JobContext, task_env: TaskEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given: the variable set in the environment after the settings were parsed without it
    task_env(WEBHOOK_SIGNING_SECRET="")
    monkeypatch.setenv("WEBHOOK_SIGNING_SECRET", SECRET)

    # When/Then: the task goes by its settings
    with pytest.raises(InvalidWebhook, match="WEBHOOK_SIGNING_SECRET"):
        deliver(url=receiver.url, payload={})
    assert receiver.received == []
