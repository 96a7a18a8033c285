"""``AsyncClient``: the twin of ``Client`` (``shared/client/sync.py``) for asyncio code (FastAPI, aiohttp).

Method for method the same calls, answers, errors and retries (all in ``shared/client/calls.py``),
awaited. Keep the two in step: ``tests/shared/client/test_clients.py`` checks they have the same methods.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Unpack

import httpx
import httpx_sse

from shared.client import ConnectionFailed, Job, JobOptions, JobPoll, calls, streams
from shared.client.base import BaseClient
from shared.client.calls import Call, RetryPolicy, ScheduleChanges


class AsyncClient(BaseClient):
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
        super().__init__(base_url, token, retry=retry)
        self._timeout_s = timeout_s
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self.headers, timeout=timeout_s, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def send(self, call: Call) -> Any:
        """One call, retried on connection failures and (when idempotent) on 502/503/504."""
        attempt = 1
        while True:
            try:
                response = await self._http.request(call.method, call.path, json=call.body, params=call.params)
            except httpx.TransportError as exc:
                await asyncio.sleep(self._pause_after_failure(call, attempt, exc))
            else:
                pause_s = self._pause_after_answer(call, attempt, response)
                if pause_s is None:
                    return self._read(call, response)
                await asyncio.sleep(pause_s)
            attempt += 1

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

    async def events(
        self,
        job_id: str | None = None,
        *,
        queue: str | None = None,
        last_event_id: str | None = None,
        timeout_s: float | None = None,
    ) -> AsyncIterator[Job]:
        """``Client.events`` for asyncio code: each change of a job, or of the jobs of a queue, as streamed."""
        state = streams.open_state(job_id, queue, last_event_id)
        failures = 0
        while not state.done and (left := state.left_s(timeout_s)) != 0:
            try:
                async with httpx_sse.aconnect_sse(
                    self._http, "GET", state.path, timeout=streams.read_timeout(self._timeout_s, left),
                    **streams.extra_kwargs(state),
                ) as source:  # fmt: skip
                    if not streams.is_stream(source.response):
                        raise streams.refuse(state, source.response, await source.response.aread())
                    failures = 0
                    async for sse in source.aiter_sse():
                        job = state.take(sse.id, sse.event, sse.data)
                        if job is not None:
                            yield job
                        if state.done:
                            return
            except httpx.TransportError as exc:
                # NOTE: a dropped or silent stream is reopened after the last event, like EventSource does.
                failures += 1
                await asyncio.sleep(self._pause_after_failure(state.call, failures, exc))

    async def wait(
        self,
        job_id: str,
        *,
        timeout_s: float | None = 60.0,
        poll_s: float = 0.2,
        on_update: Callable[[Job], None] | None = None,
        stream: bool = True,
    ) -> Job:
        """The job once final; ``WaitTimeout`` after ``timeout_s`` (None: never); ``on_update`` sees each state.

        Follows the job's event stream (``stream``), or polls every ``poll_s`` when the API cannot stream."""
        poll = JobPoll(job_id, timeout_s=timeout_s, poll_s=poll_s, on_update=on_update)
        if stream:
            try:
                async for job in self.events(job_id, timeout_s=timeout_s):
                    if poll.pause_s(job) is None:
                        return job
                # NOTE: the stream ended at the deadline: one read says how the job stands (WaitTimeout).
            except (streams.StreamUnavailable, ConnectionFailed):
                pass  # polled below
        while (pause_s := poll.pause_s(job := await self.get(job_id))) is not None:
            await asyncio.sleep(pause_s)
        return job

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
