"""The event streams (``GET /v1/jobs/{id}/events``, ``GET /v1/events``) as both httpx clients read them.

A stream ends when the server says so (after ``EVENTS_MAX_DURATION_S``) or the connection drops; the
clients then reconnect with ``Last-Event-ID``, as a browser's EventSource does, so a caller sees
every change once. A job's stream is over after its final state. When the API cannot stream (an
older API without the route, its stream limit reached, a proxy that answers something else), the
clients' ``wait`` falls back to polling.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from shared.client import FINAL_STATUSES, ClientError, Job, error_for_response
from shared.client.calls import Call, quote

#: Seconds a stream may stay silent: the API sends a comment every 15 s, so more means it is gone.
SILENCE_S = 30.0
#: Statuses of a stream request that mean "no stream here, poll instead".
NO_STREAM_STATUSES = frozenset({404, 405, 406, 501, 502, 503, 504})


class StreamUnavailable(ClientError):
    """The API did not open an event stream (an older API, its stream limit, a proxy): poll instead."""


@dataclass
class StreamState:
    """Where a stream is: the request to (re)open it, and the last event id to resume after."""

    path: str
    params: dict[str, str]
    last_event_id: str | None = None
    #: A job's stream: over once the job is final.
    job_stream: bool = False
    done: bool = False
    _deadline: float | None = field(default=None, repr=False)

    @property
    def call(self) -> Call:
        """The stream's request as the clients' retry rules see it: a GET, safe to send again."""
        return Call("GET", self.path, query=self.params, idempotent=True)

    def left_s(self, timeout_s: float | None) -> float | None:
        """Seconds left of ``timeout_s`` counted from the first call (None: no limit; 0: none left)."""
        if timeout_s is None:
            return None
        if self._deadline is None:
            self._deadline = time.monotonic() + timeout_s
        return max(0.0, self._deadline - time.monotonic())

    def headers(self) -> dict[str, str]:
        return {"Last-Event-ID": self.last_event_id} if self.last_event_id else {}

    def take(self, event_id: str, event: str, data: str) -> Job | None:
        """The job an event carries (None for other events); marks a job's stream done at its final state."""
        if event_id:
            self.last_event_id = event_id
        if event != "job":
            return None
        job: Job = json.loads(data)
        if self.job_stream and job.get("status") in FINAL_STATUSES:
            self.done = True
        return job


def open_state(job_id: str | None, queue: str | None, last_event_id: str | None) -> StreamState:
    if job_id is not None:
        return StreamState(f"/v1/jobs/{quote(job_id)}/events", {}, last_event_id, job_stream=True)
    return StreamState("/v1/events", {"queue": queue} if queue else {}, last_event_id)


def read_timeout(connect_s: float, left_s: float | None) -> httpx.Timeout:
    """The stream's timeouts: connect as the client's, a read at most ``SILENCE_S`` (and the time left)."""
    read_s = SILENCE_S if left_s is None else max(0.001, min(SILENCE_S, left_s))
    return httpx.Timeout(connect_s, read=read_s)


def refuse(state: StreamState, response: httpx.Response, body: bytes) -> ClientError:
    """What a stream request answered other than a stream: ``StreamUnavailable``, or the API's typed error."""
    content_type = response.headers.get("content-type", "")
    if response.status_code in NO_STREAM_STATUSES or response.status_code < 400:
        return StreamUnavailable(
            f"GET {state.path} answered {response.status_code} {content_type or ''}, not an event stream".strip(),
            status=response.status_code,
            method="GET",
            path=state.path,
        )
    return error_for_response(response.status_code, content_type, body, method="GET", path=state.path)


def is_stream(response: httpx.Response) -> bool:
    return response.status_code == 200 and response.headers.get("content-type", "").startswith("text/event-stream")


def extra_kwargs(state: StreamState) -> dict[str, Any]:
    return {"params": state.params, "headers": state.headers()}
