"""``Client``: the whole API over httpx, synchronous, with typed errors and retries that respect idempotency.

``JobrelayClient`` (the package's stdlib client) stays for zero-dependency scripts; this one pools
connections, retries, and is the twin of ``AsyncClient`` (``shared/client/aio.py``) method for method.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Unpack

import httpx
import httpx_sse

from shared.client import ConnectionFailed, Job, JobOptions, JobPoll, calls, streams
from shared.client.base import BaseClient
from shared.client.calls import Call, RetryPolicy, ScheduleChanges


class Client(BaseClient):
    """The jobrelay API at ``base_url`` with a bearer ``token`` (empty: send none)."""

    def __init__(
        self,
        base_url: str,
        token: str = "",
        *,
        timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, token, retry=retry)
        self._timeout_s = timeout_s
        self._http = httpx.Client(base_url=self.base_url, headers=self.headers, timeout=timeout_s, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def send(self, call: Call) -> Any:
        """One call, retried on connection failures and (when idempotent) on 502/503/504."""
        attempt = 1
        while True:
            try:
                response = self._http.request(call.method, call.path, json=call.body, params=call.params)
            except httpx.TransportError as exc:
                time.sleep(self._pause_after_failure(call, attempt, exc))
            else:
                pause_s = self._pause_after_answer(call, attempt, response)
                if pause_s is None:
                    return self._read(call, response)
                time.sleep(pause_s)
            attempt += 1

    # -- jobs --------------------------------------------------------------------------------

    def submit(self, task: str, args: Mapping[str, Any] | None = None, **options: Unpack[JobOptions]) -> Job:
        return self.send(calls.submit(task, args, options))

    def submit_batch(self, jobs: Sequence[Mapping[str, Any]]) -> list[Job]:
        return self.send(calls.submit_batch(jobs))

    def get(self, job_id: str) -> Job:
        return self.send(calls.get_job(job_id))

    def result(self, job_id: str) -> Any:
        return self.send(calls.job_result(job_id))

    def cancel(self, job_id: str) -> Job:
        return self.send(calls.cancel_job(job_id))

    def retry_job(self, job_id: str) -> Job:
        return self.send(calls.retry_job(job_id))

    def list_jobs(self, **query: Any) -> dict[str, Any]:
        """One page; filters ``status``, ``task``, ``queue``, ``workflow_id``, ``schedule_id``, ``created_after``."""
        return self.send(calls.list_jobs(query))

    def iter_jobs(self, *, page_size: int | None = None, **filters: Any) -> Iterator[Job]:
        cursor: str | None = None
        while True:
            page = self.list_jobs(limit=page_size, cursor=cursor, **filters)
            yield from page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def events(
        self,
        job_id: str | None = None,
        *,
        queue: str | None = None,
        last_event_id: str | None = None,
        timeout_s: float | None = None,
    ) -> Iterator[Job]:
        """Each change of a job (``job_id``: until it is final), or of the jobs of ``queue`` (or every queue), as
        the API streams them; reconnects after ``Last-Event-ID`` when a stream ends or drops. Stops after
        ``timeout_s`` (None: never). ``StreamUnavailable`` when the API does not stream (an older API, its
        ``EVENTS_MAX_STREAMS`` reached); the API's own errors (401, 403, 422) as ``send`` raises them."""
        state = streams.open_state(job_id, queue, last_event_id)
        failures = 0
        while not state.done and (left := state.left_s(timeout_s)) != 0:
            try:
                with httpx_sse.connect_sse(
                    self._http, "GET", state.path, timeout=streams.read_timeout(self._timeout_s, left),
                    **streams.extra_kwargs(state),
                ) as source:  # fmt: skip
                    if not streams.is_stream(source.response):
                        raise streams.refuse(state, source.response, source.response.read())
                    failures = 0
                    for sse in source.iter_sse():
                        job = state.take(sse.id, sse.event, sse.data)
                        if job is not None:
                            yield job
                        if state.done:
                            return
            except httpx.TransportError as exc:
                # NOTE: a dropped or silent stream is reopened after the last event, like EventSource does.
                failures += 1
                time.sleep(self._pause_after_failure(state.call, failures, exc))

    def wait(
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
                for job in self.events(job_id, timeout_s=timeout_s):
                    if poll.pause_s(job) is None:
                        return job
                # NOTE: the stream ended at the deadline: one read says how the job stands (WaitTimeout).
            except (streams.StreamUnavailable, ConnectionFailed):
                pass  # polled below
        while (pause_s := poll.pause_s(job := self.get(job_id))) is not None:
            time.sleep(pause_s)
        return job

    # -- tasks, queues, dead letters ---------------------------------------------------------

    def tasks(self) -> list[dict[str, Any]]:
        return self.send(calls.tasks())

    def queues(self) -> list[dict[str, Any]]:
        return self.send(calls.queues())

    def pause_queue(self, name: str) -> dict[str, Any]:
        return self.send(calls.pause_queue(name))

    def resume_queue(self, name: str) -> dict[str, Any]:
        return self.send(calls.resume_queue(name))

    def dead_letters(self, queue: str, *, limit: int | None = None, cursor: str | None = None) -> dict[str, Any]:
        return self.send(calls.dead_letters(queue, limit, cursor))

    def requeue_dead(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Requeue these dead letters of ``queue`` (None: all); how many went back."""
        return self.send(calls.requeue_dead(queue, ids))

    def purge_dead(self, queue: str) -> int:
        return self.send(calls.purge_dead(queue))

    # -- workflows ---------------------------------------------------------------------------

    def submit_workflow(self, workflow: Mapping[str, Any]) -> dict[str, Any]:
        return self.send(calls.submit_workflow(workflow))

    def get_workflow(self, workflow_id: str) -> dict[str, Any]:
        return self.send(calls.get_workflow(workflow_id))

    def cancel_workflow(self, workflow_id: str) -> dict[str, Any]:
        return self.send(calls.cancel_workflow(workflow_id))

    # -- schedules ---------------------------------------------------------------------------

    def schedules(self) -> list[dict[str, Any]]:
        return self.send(calls.schedules())

    def get_schedule(self, schedule_id: str) -> dict[str, Any]:
        return self.send(calls.get_schedule(schedule_id))

    def create_schedule(self, schedule: Mapping[str, Any]) -> dict[str, Any]:
        return self.send(calls.create_schedule(schedule))

    def update_schedule(self, schedule_id: str, **changes: Unpack[ScheduleChanges]) -> dict[str, Any]:
        return self.send(calls.update_schedule(schedule_id, **changes))

    def delete_schedule(self, schedule_id: str) -> None:
        self.send(calls.delete_schedule(schedule_id))

    def trigger_schedule(self, schedule_id: str) -> Job:
        """One job of the schedule now, outside its timing."""
        return self.send(calls.trigger_schedule(schedule_id))
