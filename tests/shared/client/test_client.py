"""``shared.client`` against the real API served over loopback HTTP (wsgiref), a real Redis and store.

The server fixtures here are imported by ``tests/shared/client/test_cli.py`` too.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

from services.api.app import create_app
from shared.broker.publishing import build_broker
from shared.client import (
    ApiBadRequest,
    ApiConflict,
    ApiForbidden,
    ApiInvalidRequest,
    ApiNotFound,
    ApiPayloadTooLarge,
    ApiServerError,
    ApiUnauthorized,
    ApiUnavailable,
    ClientError,
    ConnectionFailed,
    JobrelayClient,
    WaitTimeout,
    error_for_response,
    job_request,
)
from shared.redis_server import free_port
from shared.settings import Settings, parse_api_keys
from shared.store.jobs import JobStore
from shared.store.tasks import TaskRegistry
from tests.services.worker.conftest import Harness, harness, worker_settings  # noqa: F401

ADMIN = "admintoken-client-123456"
WRITER = "writertoken-client-123456"
READER = "readertoken-client-123456"
KEYS = f"ops:{ADMIN}:admin ci:{WRITER}:read+write dash:{READER}:read"
ECHO_ARGS = {"message": "hi"}


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: the client does not depend on the store, and this keeps these tests fast."""
    return f"sqlite:///{tmp_path / 'jobs.db'}"


@pytest.fixture
def api_url(redis_url: str, store: JobStore, registry: TaskRegistry, tmp_path: Path) -> Iterator[str]:
    """The real app on a free loopback port, served by threads until the test ends."""
    settings = Settings(redis_url=redis_url, api_keys=parse_api_keys(KEYS), data_dir=tmp_path)
    broker = build_broker(settings.require_redis_url("tests"))
    app = create_app(settings, store=store, registry=registry, broker=broker)
    server = make_server("127.0.0.1", free_port(), app, server_class=_ThreadingServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
    broker.close()


@pytest.fixture
def api(api_url: str) -> JobrelayClient:
    return JobrelayClient(api_url, WRITER, timeout_s=5)


def test_submit_then_get_returns_the_queued_job(api: JobrelayClient) -> None:
    job = api.submit("diagnostics.echo", ECHO_ARGS, priority=3, max_retries=1)
    assert job["status"] == "queued" and job["task"] == "diagnostics.echo" and job["args"] == ECHO_ARGS
    assert job["priority"] == 3 and job["max_retries"] == 1
    assert api.get(job["id"]) == job


def test_submit_with_delay_is_scheduled(api: JobrelayClient) -> None:
    job = api.submit("diagnostics.echo", ECHO_ARGS, delay_s=60)
    assert job["status"] == "scheduled" and job["scheduled_for"] is not None


def test_a_unique_job_submitted_again_is_the_same_job(api: JobrelayClient) -> None:
    first = api.submit("diagnostics.echo", ECHO_ARGS, unique_for_s=60, unique_key="order-7")
    again = api.submit("diagnostics.echo", {"message": "other"}, unique_for_s=60, unique_key="order-7")
    assert again["id"] == first["id"] and again["unique_key"] == first["unique_key"]


def test_idempotency_key_returns_the_original_job(api: JobrelayClient) -> None:
    first = api.submit("diagnostics.echo", ECHO_ARGS, idempotency_key="order-42")
    assert api.submit("diagnostics.echo", ECHO_ARGS, idempotency_key="order-42")["id"] == first["id"]
    with pytest.raises(ApiConflict) as caught:
        api.submit("diagnostics.echo", {"message": "other"}, idempotency_key="order-42")
    assert caught.value.status == 409


def test_submit_batch_keeps_request_order(api: JobrelayClient) -> None:
    jobs = api.submit_batch([job_request("diagnostics.echo", {"message": str(i)}) for i in range(3)])
    assert [job["args"]["message"] for job in jobs] == ["0", "1", "2"]


def test_list_filters_and_iter_jobs_follows_cursors(api: JobrelayClient) -> None:
    submitted = [api.submit("diagnostics.echo", {"message": str(i)})["id"] for i in range(5)]
    api.submit("diagnostics.sleep", {"seconds": 1})
    page = api.list(task="diagnostics.echo", limit=2)
    assert len(page["items"]) == 2 and page["next_cursor"]
    walked = [job["id"] for job in api.iter_jobs(task="diagnostics.echo", page_size=2)]
    assert walked == submitted[::-1]
    assert [job["task"] for job in api.iter_jobs(status="queued", queue="default")].count("diagnostics.sleep") == 1


def test_cancel_then_cancel_again_is_a_conflict(api: JobrelayClient) -> None:
    job = api.submit("diagnostics.echo", ECHO_ARGS, delay_s=60)
    assert api.cancel(job["id"])["status"] == "cancelled"
    with pytest.raises(ApiConflict) as caught:
        api.cancel(job["id"])
    assert caught.value.status == 409 and caught.value.title == "Conflict"
    assert caught.value.method == "POST" and caught.value.path == f"/v1/jobs/{job['id']}/cancel"


def test_tasks_lists_the_catalog(api: JobrelayClient) -> None:
    tasks = {task["name"]: task for task in api.tasks()}
    assert tasks["diagnostics.sleep"]["args_schema"]["properties"]["seconds"]
    assert tasks["diagnostics.echo"]["queue"] == "default"


def test_wait_returns_the_succeeded_job_and_result(api: JobrelayClient, harness: Harness) -> None:  # noqa: F811
    job = api.submit("diagnostics.echo", ECHO_ARGS)
    seen: list[str] = []
    done = api.wait(job["id"], timeout_s=10, poll_s=0.02, on_update=lambda j: seen.append(j["status"]))
    assert done["status"] == "succeeded" and done["result"] == "hi"
    assert seen[-1] == "succeeded"
    assert api.result(job["id"]) == "hi"


def test_wait_times_out_with_the_last_state(api: JobrelayClient) -> None:
    job = api.submit("diagnostics.echo", ECHO_ARGS)
    with pytest.raises(WaitTimeout) as caught:
        api.wait(job["id"], timeout_s=0.2, poll_s=0.05)
    assert isinstance(caught.value, TimeoutError) and isinstance(caught.value, ClientError)
    assert caught.value.job["status"] == "queued" and job["id"] in str(caught.value)


def test_result_before_success_is_not_found(api: JobrelayClient) -> None:
    job = api.submit("diagnostics.echo", ECHO_ARGS)
    with pytest.raises(ApiNotFound):
        api.result(job["id"])


def test_wrong_token_is_unauthorized_and_never_shown(api_url: str) -> None:
    secret = "not-a-known-token-s3cr3t"
    client = JobrelayClient(api_url, secret)
    with pytest.raises(ApiUnauthorized) as caught:
        client.list()
    error = caught.value
    assert error.status == 401 and error.detail
    for text in (str(error), repr(error), repr(client), str(error.__cause__), str(error.__context__)):
        assert secret not in text


def test_read_only_token_is_forbidden_to_submit(api_url: str) -> None:
    reader = JobrelayClient(api_url, READER)
    assert reader.list()["items"] == []
    with pytest.raises(ApiForbidden) as caught:
        reader.submit("diagnostics.echo", ECHO_ARGS)
    assert caught.value.status == 403 and "write" in caught.value.detail
    assert READER not in str(caught.value) and READER not in repr(caught.value)


def test_unknown_job_is_not_found(api: JobrelayClient) -> None:
    with pytest.raises(ApiNotFound) as caught:
        api.get("no-such-job")
    assert caught.value.status == 404


def test_invalid_arguments_are_invalid_request_with_paths(api: JobrelayClient) -> None:
    with pytest.raises(ApiInvalidRequest) as caught:
        api.submit("diagnostics.sleep", {"seconds": -1, "extra": True})
    error = caught.value
    paths = {e["path"] for e in error.errors}
    assert error.status == 422 and "/args/seconds" in paths
    assert "/args/seconds" in str(error) and "\n" not in str(error)
    with pytest.raises(ApiInvalidRequest) as batch:
        api.submit_batch([job_request("diagnostics.echo", ECHO_ARGS), job_request("no.such.task")])
    assert batch.value.errors and all(e["path"].startswith("/jobs/1/") for e in batch.value.errors)


def test_oversized_body_is_payload_too_large(api: JobrelayClient) -> None:
    with pytest.raises(ApiPayloadTooLarge) as caught:
        api.submit("diagnostics.echo", {"message": "x" * (1024 * 1024 + 1)})
    assert caught.value.status == 413


def test_retry_posts_to_the_retry_route(api: JobrelayClient) -> None:
    with pytest.raises(ApiNotFound):
        api.retry("no-such-job")
    queued = api.submit("diagnostics.echo", ECHO_ARGS)
    # A GET would be 405; only a POST to /retry reaches the state check that refuses a queued job.
    with pytest.raises(ApiConflict) as caught:
        api.retry(queued["id"])
    assert caught.value.method == "POST" and caught.value.path == f"/v1/jobs/{queued['id']}/retry"


def test_refused_connection_is_connection_failed() -> None:
    client = JobrelayClient(f"http://127.0.0.1:{free_port()}", "s3cr3t-token-xyz", timeout_s=2)
    with pytest.raises(ConnectionFailed) as caught:
        client.get("anything")
    assert isinstance(caught.value, ConnectionError) and caught.value.status is None
    assert "s3cr3t-token-xyz" not in str(caught.value)


def test_non_http_base_url_is_refused() -> None:
    with pytest.raises(ValueError):
        JobrelayClient("file:///etc/passwd", "t")


@pytest.mark.parametrize(
    ("status", "cls"),
    [(400, ApiBadRequest), (405, ClientError), (500, ApiServerError), (502, ApiServerError), (503, ApiUnavailable)],
)
def test_error_mapping_covers_statuses_a_test_server_cannot_produce(status: int, cls: type[ClientError]) -> None:
    problem = b'{"title": "T", "status": 0, "detail": "D", "errors": [{"path": "/x", "message": "m"}]}'
    error = error_for_response(status, "application/problem+json", problem, method="GET", path="/v1/jobs")
    assert type(error) is cls and error.status == status and error.title == "T" and error.detail == "D"
    assert error.errors == [{"path": "/x", "message": "m"}]
    html = error_for_response(status, "text/html", b"<h1>Bad gateway</h1>", method="GET", path="/")
    assert type(html) is cls and "Bad gateway" in html.detail and html.errors == []
