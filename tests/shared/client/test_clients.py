"""The httpx clients (sync and async) against the real API over loopback, their retries, and task.submit()."""

from __future__ import annotations

import asyncio
import inspect

import httpx
import pytest

from shared.catalog import Catalog
from shared.client import (
    ApiConflict,
    ApiInvalidRequest,
    ApiNotFound,
    ApiUnavailable,
    ConnectionFailed,
    JobPoll,
    WaitTimeout,
)
from shared.client.aio import AsyncClient
from shared.client.calls import RetryPolicy
from shared.client.sync import Client
from shared.redis_server import free_port
from tests.services.worker.conftest import Harness, harness, worker_settings  # noqa: F401
from tests.shared.client.test_client import ADMIN, WRITER, api_url, database_url  # noqa: F401

FAST = RetryPolicy(attempts=3, min_s=0.001, max_s=0.01)


def public_methods(cls: type) -> set[str]:
    return {name for name, _ in inspect.getmembers(cls, inspect.isfunction) if not name.startswith("_")}


def test_the_async_client_has_every_method_of_the_sync_one() -> None:
    assert public_methods(Client) - {"from_env"} <= public_methods(AsyncClient) | {"from_env"}
    for name in public_methods(Client) - {"from_env", "iter_jobs", "events"}:
        assert inspect.iscoroutinefunction(getattr(AsyncClient, name)), name


def test_sync_client_covers_jobs_queues_tasks_workflows_and_schedules(api_url: str) -> None:  # noqa: F811
    with Client(api_url, ADMIN) as api:
        job = api.submit("diagnostics.echo", {"message": "hi"}, delay_s=600, idempotency_key="k-1")
        assert api.submit("diagnostics.echo", {"message": "hi"}, delay_s=600, idempotency_key="k-1")["id"] == job["id"]
        assert api.get(job["id"])["status"] == "scheduled"
        assert [j["id"] for j in api.iter_jobs(task="diagnostics.echo", page_size=1)] == [job["id"]]
        assert api.cancel(job["id"])["status"] == "cancelled"
        with pytest.raises(ApiConflict):
            api.cancel(job["id"])
        assert api.retry_job(job["id"])["status"] in {"queued", "scheduled"}
        [batch_job] = api.submit_batch([{"task": "diagnostics.echo", "args": {"message": "b"}}])
        assert batch_job["task"] == "diagnostics.echo"

        assert "diagnostics.echo" in {task["name"] for task in api.tasks()}
        assert "default" in {queue["name"] for queue in api.queues()}
        assert api.pause_queue("default")["paused"] is True
        assert api.resume_queue("default")["paused"] is False
        assert api.dead_letters("default")["items"] == []
        assert api.requeue_dead("default") == 0

        workflow = api.submit_workflow(
            {"type": "chain", "steps": [{"task": "diagnostics.echo", "args": {"message": "w"}}]}
        )
        assert api.get_workflow(workflow["id"])["type"] == "chain"

        api.create_schedule(
            {"id": "every-minute", "task": "diagnostics.echo", "args": {"message": "s"}, "interval_s": 60}
        )
        assert api.update_schedule("every-minute", enabled=False)["enabled"] is False
        assert api.trigger_schedule("every-minute")["schedule_id"] == "every-minute"
        assert "every-minute" in {schedule["id"] for schedule in api.schedules()}
        api.delete_schedule("every-minute")
        with pytest.raises(ApiNotFound):
            api.get_schedule("every-minute")


def test_async_client_submits_reads_and_lists(api_url: str) -> None:  # noqa: F811
    async def scenario() -> None:
        async with AsyncClient(api_url, WRITER) as api:
            job = await api.submit("diagnostics.echo", {"message": "async"}, delay_s=600)
            assert (await api.get(job["id"]))["args"] == {"message": "async"}
            assert [j["id"] async for j in api.iter_jobs(task="diagnostics.echo")] == [job["id"]]
            with pytest.raises(ApiInvalidRequest) as caught:
                await api.submit("diagnostics.sleep", {"seconds": -1})
            assert caught.value.errors[0]["path"] == "/args/seconds"

    asyncio.run(scenario())


def _flaky(statuses: list[int], seen: list[str]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        status = statuses.pop(0) if statuses else 200
        if status == 200:
            return httpx.Response(200, json={"id": "j1", "status": "queued"})
        return httpx.Response(status, json={"title": "Service Unavailable", "detail": "store down"})

    return httpx.MockTransport(handle)


def test_a_503_is_retried_for_an_idempotent_call_only() -> None:
    seen: list[str] = []
    api = Client("http://api.test", "t", retry=FAST, transport=_flaky([503, 503], seen))
    assert api.get("j1")["id"] == "j1" and seen == ["GET"] * 3

    seen.clear()
    api = Client("http://api.test", "t", retry=FAST, transport=_flaky([503], seen))
    with pytest.raises(ApiUnavailable):
        api.submit("diagnostics.echo", {"message": "x"})  # no idempotency key: never sent twice
    assert seen == ["POST"]

    seen.clear()
    api = Client("http://api.test", "t", retry=FAST, transport=_flaky([503], seen))
    assert api.submit("diagnostics.echo", {"message": "x"}, idempotency_key="once")["id"] == "j1"
    assert seen == ["POST", "POST"]


def test_the_async_client_retries_as_the_sync_one_does() -> None:
    seen: list[str] = []

    def dropped(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        raise httpx.ReadError("connection reset", request=request)

    async def scenario() -> None:
        async with AsyncClient("http://api.test", "t", retry=FAST, transport=_flaky([503, 503], seen)) as api:
            assert (await api.get("j1"))["id"] == "j1"
        assert seen == ["GET"] * 3
        seen.clear()
        # Given an answer lost after the server may have acted: a POST without a key is never repeated.
        async with AsyncClient("http://api.test", "t", retry=FAST, transport=httpx.MockTransport(dropped)) as api:
            with pytest.raises(ConnectionFailed, match=r"connection to .* failed"):
                await api.submit("diagnostics.echo", {"message": "x"})
            assert seen == ["POST"]
            with pytest.raises(ConnectionFailed):
                await api.get("j1")
            assert seen == ["POST"] + ["GET"] * FAST.attempts

    asyncio.run(scenario())


def test_a_poll_pauses_until_the_job_is_final_and_times_out_with_the_last_state() -> None:
    seen: list[str] = []
    poll = JobPoll("j1", timeout_s=None, poll_s=0.5, on_update=lambda job: seen.append(job["status"]))
    assert poll.pause_s({"status": "running"}) == 0.5
    assert poll.pause_s({"status": "succeeded"}) is None
    assert seen == ["running", "succeeded"]

    expired = JobPoll("j1", timeout_s=0, poll_s=0.5, on_update=None)
    with pytest.raises(WaitTimeout, match="job j1 is still queued after 0s") as caught:
        expired.pause_s({"status": "queued"})
    assert caught.value.job == {"status": "queued"}


def test_a_refused_connection_is_retried_then_reported() -> None:
    api = Client(f"http://127.0.0.1:{free_port()}", "t", retry=FAST)
    with pytest.raises(ConnectionFailed, match="cannot reach"):
        api.submit("diagnostics.echo", {"message": "x"})


def test_task_submit_validates_locally_then_returns_a_handle(
    api_url: str,  # noqa: F811
    harness: Harness,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    catalog = Catalog()

    @catalog.task(name="diagnostics.echo")
    def echo(message: str) -> str:
        return message

    monkeypatch.setenv("JOBRELAY_URL", api_url)
    monkeypatch.setenv("JOBRELAY_TOKEN", WRITER)
    monkeypatch.setattr("shared.client.handles._default_client", None)

    with pytest.raises(ApiInvalidRequest) as caught:
        echo.submit(message=3)  # type: ignore[attr-defined]
    assert caught.value.errors == [{"path": "/args/message", "message": "3 is not of type 'string'"}]

    handle = echo.submit(message="handled")  # type: ignore[attr-defined]
    assert handle.wait(timeout_s=10)["status"] == "succeeded" and handle.result() == "handled"

    later = echo.using(Client(api_url, WRITER), delay_s=600).submit(message="later")  # type: ignore[attr-defined]
    assert later.job["status"] == "scheduled" and later.cancel()["status"] == "cancelled"

    async def scenario() -> str:
        async with AsyncClient(api_url, WRITER) as api:
            handle = await echo.using(api).asubmit(message="async")  # type: ignore[attr-defined]
            return await handle.result(timeout_s=10)

    assert asyncio.run(scenario()) == "async"
