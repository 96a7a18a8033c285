"""``AsyncClient``: the twin of ``Client`` (``shared/client/sync.py``) for asyncio code (FastAPI, aiohttp).

Method for method the same calls, answers, errors and retries (all in ``shared/client/calls.py``),
awaited. Keep the two in step: ``tests/shared/client/test_clients.py`` checks they have the same methods.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Unpack

import httpx

from shared.client import FINAL_STATUSES, ConnectionFailed, Job, JobOptions, WaitTimeout, calls
from shared.client.calls import Call, RetryPolicy, ScheduleChanges


class AsyncClient:
    """The jobrelay API at ``base_url`` with a bearer ``token`` (empty: send none)."""

    def __init__(
        self,
        base_url: str,
        token: str = "",
        *,
        timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Accept": "application/json, application/problem+json", "User-Agent": "jobrelay-client/2"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        # NOTE: httpx drops Authorization on a redirect to another host, so the token stays with the API.
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout_s, transport=transport)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> AsyncClient:
        """From ``JOBRELAY_URL`` (else ``API_BIND``, else 127.0.0.1:8000) and ``JOBRELAY_TOKEN``."""
        env = os.environ if environ is None else environ
        return cls(calls.default_url(env), env.get("JOBRELAY_TOKEN", ""), **options)

    def __repr__(self) -> str:
        return f"AsyncClient({self.base_url!r})"

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def send(self, call: Call) -> Any:
        """One call, retried on connection failures and (when idempotent) on 502/503/504."""
        for attempt in range(1, self.retry.attempts + 1):
            last = attempt == self.retry.attempts
            try:
                response = await self._http.request(call.method, call.path, json=call.body, params=call.params)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # Never reached the server: safe to send again whatever the call is.
                if last:
                    raise ConnectionFailed(
                        f"cannot reach {self.base_url}: {exc}", method=call.method, path=call.path
                    ) from exc
                await asyncio.sleep(self.retry.delay_s(attempt, None))
                continue
            except httpx.TransportError as exc:
                if last or not call.idempotent:
                    raise ConnectionFailed(
                        f"connection to {self.base_url} failed: {exc or type(exc).__name__}",
                        method=call.method,
                        path=call.path,
                    ) from exc
                await asyncio.sleep(self.retry.delay_s(attempt, None))
                continue
            if response.status_code in calls.RETRY_STATUSES and call.idempotent and not last:
                await asyncio.sleep(self.retry.delay_s(attempt, response.headers.get("Retry-After")))
                continue
            return calls.read_answer(
                call, response.status_code, response.headers.get("content-type", ""), response.content
            )
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _failed(call: Call, detail: str) -> ConnectionFailed:
        return ConnectionFailed(detail, method=call.method, path=call.path)

    # -- jobs --------------------------------------------------------------------------------

    async def submit(self, task: str, args: Mapping[str, Any] | None = None, **options: Unpack[JobOptions]) -> Job:
        return await self.send(calls.submit(task, args, options))

    async def submit_batch(self, jobs: Sequence[Mapping[str, Any]]) -> list[Job]:
        return await self.send(calls.submit_batch(jobs))

    async def get(self, job_id: str) -> Job:
        return await self.send(calls.get_job(job_id))

    async def result(self, job_id: str) -> Any:
        return await self.send(calls.job_result(job_id))

    async def cancel(self, job_id: str) -> Job:
        return await self.send(calls.cancel_job(job_id))

    async def retry_job(self, job_id: str) -> Job:
        return await self.send(calls.retry_job(job_id))

    async def list_jobs(self, **query: Any) -> dict[str, Any]:
        """One page; filters ``status``, ``task``, ``queue``, ``workflow_id``, ``schedule_id``, ``created_after``."""
        return await self.send(calls.list_jobs(query))

    async def iter_jobs(self, *, page_size: int | None = None, **filters: Any) -> AsyncIterator[Job]:
        cursor: str | None = None
        while True:
            page = await self.list_jobs(limit=page_size, cursor=cursor, **filters)
            for job in page["items"]:
                yield job
            cursor = page.get("next_cursor")
            if not cursor:
                return

    async def wait(
        self,
        job_id: str,
        *,
        timeout_s: float | None = 60.0,
        poll_s: float = 0.2,
        on_update: Callable[[Job], None] | None = None,
    ) -> Job:
        """The job once final; ``WaitTimeout`` after ``timeout_s`` (None: never); ``on_update`` sees each state."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = await self.get(job_id)
            if on_update is not None:
                on_update(job)
            if job.get("status") in FINAL_STATUSES:
                return job
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise WaitTimeout(f"job {job_id} is still {job.get('status')} after {timeout_s:g}s", job=job)
            await asyncio.sleep(poll_s if left is None else min(poll_s, left))

    # -- tasks, queues, dead letters ---------------------------------------------------------

    async def tasks(self) -> list[dict[str, Any]]:
        return await self.send(calls.tasks())

    async def queues(self) -> list[dict[str, Any]]:
        return await self.send(calls.queues())

    async def pause_queue(self, name: str) -> dict[str, Any]:
        return await self.send(calls.pause_queue(name))

    async def resume_queue(self, name: str) -> dict[str, Any]:
        return await self.send(calls.resume_queue(name))

    async def dead_letters(self, queue: str, *, limit: int | None = None, cursor: str | None = None) -> dict[str, Any]:
        return await self.send(calls.dead_letters(queue, limit, cursor))

    async def requeue_dead(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Requeue these dead letters of ``queue`` (None: all); how many went back."""
        return await self.send(calls.requeue_dead(queue, ids))

    async def purge_dead(self, queue: str) -> int:
        return await self.send(calls.purge_dead(queue))

    # -- workflows ---------------------------------------------------------------------------

    async def submit_workflow(self, workflow: Mapping[str, Any]) -> dict[str, Any]:
        return await self.send(calls.submit_workflow(workflow))

    async def get_workflow(self, workflow_id: str) -> dict[str, Any]:
        return await self.send(calls.get_workflow(workflow_id))

    async def cancel_workflow(self, workflow_id: str) -> dict[str, Any]:
        return await self.send(calls.cancel_workflow(workflow_id))

    # -- schedules ---------------------------------------------------------------------------

    async def schedules(self) -> list[dict[str, Any]]:
        return await self.send(calls.schedules())

    async def get_schedule(self, schedule_id: str) -> dict[str, Any]:
        return await self.send(calls.get_schedule(schedule_id))

    async def create_schedule(self, schedule: Mapping[str, Any]) -> dict[str, Any]:
        return await self.send(calls.create_schedule(schedule))

    async def update_schedule(self, schedule_id: str, **changes: Unpack[ScheduleChanges]) -> dict[str, Any]:
        return await self.send(calls.update_schedule(schedule_id, **changes))

    async def delete_schedule(self, schedule_id: str) -> None:
        await self.send(calls.delete_schedule(schedule_id))

    async def trigger_schedule(self, schedule_id: str) -> Job:
        """One job of the schedule now, outside its timing."""
        return await self.send(calls.trigger_schedule(schedule_id))
