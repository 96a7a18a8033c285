"""A small Python client for the jobrelay HTTP API (see API.md), on the standard library only.

Callers get plain dicts shaped exactly as the API documents them, and every
error the API can answer with becomes a typed ``ClientError`` carrying the
problem+json fields, so scripts can ``except ApiNotFound`` rather than parse
status codes. The bearer token is kept out of every message and repr.

The classes for an HTTP answer are named ``Api<what the API said>``, so none
shares a name with the server's own error tree (``shared.errors.NotFound``).
Users import all of these from ``jobrelay``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, TypedDict, Unpack

Job = dict[str, Any]
JobList = list[Job]
TaskList = list[dict[str, Any]]
QueueList = list[dict[str, Any]]

#: The statuses a job never leaves on its own.
FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled", "expired"})


class ClientError(Exception):
    """Any failure of an API call; ``status``/``title``/``detail``/``errors`` mirror problem+json."""

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        title: str = "",
        errors: Sequence[Mapping[str, Any]] | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.errors: list[dict[str, str]] = [
            {"path": str(e.get("path", "")), "message": str(e.get("message", ""))} for e in errors or ()
        ]
        self.method = method
        self.path = path
        # One line: where, what status, why, each field problem; never headers, so never the token.
        text = " ".join(detail.split())
        if status is not None:
            text = f"{status} {title or 'Error'}: {text}"
        if method and path:
            text = f"{method} {path} -> {text}"
        if self.errors:
            text += " [" + "; ".join(f"{e['path']}: {e['message']}" for e in self.errors) + "]"
        super().__init__(text)


class ApiBadRequest(ClientError):
    """400: the body was not JSON."""


class ApiUnauthorized(ClientError):
    """401: no token, or a token the server does not know."""


class ApiForbidden(ClientError):
    """403: a known token without the scope this call needs."""


class ApiNotFound(ClientError):
    """404: no such job (or route, or result yet)."""


class ApiConflict(ClientError):
    """409: the job's state forbids this (cancel a finished job, reuse an idempotency key)."""


class ApiPayloadTooLarge(ClientError):
    """413: the request body is over the server's limit."""


class ApiInvalidRequest(ClientError):
    """422: the request was understood but is invalid; ``errors`` names each problem by JSON pointer."""


class ApiUnavailable(ClientError):
    """503: a dependency of the server (Redis, the store) is down; retrying later may work."""


class ApiServerError(ClientError):
    """Any other 5xx."""


class ConnectionFailed(ClientError, ConnectionError):
    """The server could not be reached or dropped the connection (no HTTP status)."""


class WaitTimeout(ClientError, TimeoutError):
    """``wait`` gave up before the job reached a final state; ``job`` is the last state seen."""

    def __init__(self, detail: str, *, job: Job) -> None:
        self.job = job
        super().__init__(detail)


class JobPoll:
    """The polling of every client's ``wait``: given each state seen, how long to pause before the next.

    One place for the deadline and the ``on_update`` rule, so the stdlib, sync and async clients
    wait alike; each only sleeps its own way (``time.sleep`` or ``asyncio.sleep``).
    """

    def __init__(
        self, job_id: str, *, timeout_s: float | None, poll_s: float, on_update: Callable[[Job], None] | None
    ) -> None:
        self.job_id = job_id
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.on_update = on_update
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def pause_s(self, job: Job) -> float | None:
        """None once ``job`` is final; else the seconds to sleep. ``WaitTimeout`` past the deadline."""
        if self.on_update is not None:
            self.on_update(job)
        if job.get("status") in FINAL_STATUSES:
            return None
        if self._deadline is None:
            return self.poll_s
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise WaitTimeout(f"job {self.job_id} is still {job.get('status')} after {self.timeout_s:g}s", job=job)
        return min(self.poll_s, left)


_BY_STATUS: dict[int, type[ClientError]] = {
    400: ApiBadRequest,
    401: ApiUnauthorized,
    403: ApiForbidden,
    404: ApiNotFound,
    409: ApiConflict,
    413: ApiPayloadTooLarge,
    422: ApiInvalidRequest,
    503: ApiUnavailable,
}


def error_for_response(status: int, content_type: str, body: bytes, *, method: str, path: str) -> ClientError:
    """The typed error for an HTTP error answer; tolerates bodies that are not problem+json (proxies)."""
    problem: Any = None
    if content_type.endswith("json"):
        try:
            problem = json.loads(body)
        except ValueError:
            problem = None
    if not isinstance(problem, dict):
        problem = {"detail": body.decode("utf-8", "replace").strip()[:200]}
    cls = _BY_STATUS.get(status) or (ApiServerError if status >= 500 else ClientError)
    raw_errors = problem.get("errors")
    errors = [e for e in raw_errors if isinstance(e, dict)] if isinstance(raw_errors, list) else []
    return cls(
        str(problem.get("detail") or problem.get("title") or f"HTTP {status}"),
        status=status,
        title=str(problem.get("title") or http.client.responses.get(status, "Error")),
        errors=errors,
        method=method,
        path=path,
    )


class JobOptions(TypedDict, total=False):
    """The optional fields of a job request (API.md); None leaves one to the task's default."""

    queue: str | None
    delay_s: float | None
    eta: str | datetime | None
    priority: int | None
    max_retries: int | None
    time_limit_s: float | None
    max_age_s: float | None
    idempotency_key: str | None
    unique_for_s: float | None
    debounce_s: float | None
    unique_key: str | None
    callback_url: str | None


def job_request(task: str, args: Mapping[str, Any] | None = None, **options: Unpack[JobOptions]) -> dict[str, Any]:
    """One job request body as ``POST /v1/jobs`` takes it (also the items of ``submit_batch``)."""
    body: dict[str, Any] = {"task": task, "args": dict(args or {})}
    for name, value in options.items():
        if value is not None:
            body[name] = value.isoformat() if isinstance(value, datetime) else value
    return body


def _send_tolerating_close(send: Callable[[Any], None], data: Any) -> None:
    """Keep going when the server closes while we still send the body: it answered early (413, 401).

    If it did not answer at all, ``getresponse`` fails next and that becomes ``ConnectionFailed``.
    """
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        send(data)


class _EarlyAnswerHTTPConnection(http.client.HTTPConnection):
    def send(self, data: Any) -> None:
        _send_tolerating_close(super().send, data)


class _EarlyAnswerHTTPSConnection(http.client.HTTPSConnection):
    def send(self, data: Any) -> None:
        _send_tolerating_close(super().send, data)


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_EarlyAnswerHTTPConnection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self) -> None:
        super().__init__()
        self.tls = ssl.create_default_context()

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_EarlyAnswerHTTPSConnection, req, context=self.tls)


class JobrelayClient:
    """Calls the jobrelay API at ``base_url`` with a bearer ``token`` (empty: send none)."""

    def __init__(self, base_url: str, token: str, *, timeout_s: float = 10.0) -> None:
        scheme = urllib.parse.urlsplit(base_url).scheme
        if scheme not in ("http", "https"):
            raise ValueError(f"base_url must be an http:// or https:// URL, got scheme {scheme!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._token = token
        self._opener = urllib.request.build_opener(_HTTPHandler(), _HTTPSHandler())

    def __repr__(self) -> str:
        return f"JobrelayClient({self.base_url!r})"

    def _call(self, method: str, path: str, *, body: Any = None, query: Mapping[str, Any] | None = None) -> Any:
        """One request; JSON answers are decoded, other bodies returned as bytes, errors raised typed."""
        params = {k: v for k, v in (query or {}).items() if v is not None}
        url = self.base_url + path + (f"?{urllib.parse.urlencode(params)}" if params else "")
        data = None if body is None else json.dumps(body).encode()
        # The scheme was checked to be http(s) in __init__.
        request = urllib.request.Request(url, data=data, method=method)  # noqa: S310
        request.add_header("Accept", "application/json, application/problem+json")
        request.add_header("User-Agent", "jobrelay-client/1")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self._token:
            # NOTE: unredirected, so a redirect to another host never receives the token.
            request.add_unredirected_header("Authorization", f"Bearer {self._token}")
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                content_type, raw = response.headers.get_content_type(), response.read()
        except urllib.error.HTTPError as exc:
            content_type = exc.headers.get_content_type() if exc.headers else ""
            try:
                problem = exc.read()
            except (OSError, http.client.HTTPException):
                problem = b""
            raise error_for_response(exc.code, content_type, problem, method=method, path=path) from None
        except urllib.error.URLError as exc:
            raise ConnectionFailed(f"cannot reach {self.base_url}: {exc.reason}", method=method, path=path) from exc
        except (OSError, http.client.HTTPException) as exc:
            reason = str(exc) or type(exc).__name__
            raise ConnectionFailed(f"connection to {self.base_url} failed: {reason}", method=method, path=path) from exc
        if not raw:
            return None
        if content_type.endswith("json"):
            return json.loads(raw)
        return raw

    @staticmethod
    def _job_path(job_id: str, suffix: str = "") -> str:
        return f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}{suffix}"

    def submit(self, task: str, args: Mapping[str, Any] | None = None, **options: Unpack[JobOptions]) -> Job:
        """Submit one job; a repeat with the same idempotency key returns the original job."""
        return self._call("POST", "/v1/jobs", body=job_request(task, args, **options))

    def submit_batch(self, jobs: Sequence[Mapping[str, Any]]) -> JobList:
        """Submit up to 1000 job requests (see ``job_request``) all-or-nothing; jobs come back in order."""
        return self._call("POST", "/v1/jobs/batch", body={"jobs": [dict(job) for job in jobs]})["jobs"]

    def get(self, job_id: str) -> Job:
        """The job as it is now; ``ApiNotFound`` for an unknown id."""
        return self._call("GET", self._job_path(job_id))

    def result(self, job_id: str) -> Any:
        """The job's result: decoded JSON, or bytes for a stored non-JSON body. ``ApiNotFound`` until done."""
        return self._call("GET", self._job_path(job_id, "/result"))

    def wait(
        self,
        job_id: str,
        *,
        timeout_s: float | None = 60,
        poll_s: float = 0.1,
        on_update: Callable[[Job], None] | None = None,
    ) -> Job:
        """Poll until the job is final and return it; ``WaitTimeout`` after ``timeout_s`` (None: never).

        ``on_update`` sees every polled state, the final one included (a progress display, say).
        """
        poll = JobPoll(job_id, timeout_s=timeout_s, poll_s=poll_s, on_update=on_update)
        while (pause_s := poll.pause_s(job := self.get(job_id))) is not None:
            time.sleep(pause_s)
        return job

    def cancel(self, job_id: str) -> Job:
        """Cancel a job; ``ApiConflict`` if it is already final."""
        return self._call("POST", self._job_path(job_id, "/cancel"))

    def retry(self, job_id: str) -> Job:
        """Run a failed, cancelled or expired job again; ``ApiConflict`` in other states."""
        return self._call("POST", self._job_path(job_id, "/retry"))

    def list(
        self,
        status: str | None = None,
        task: str | None = None,
        queue: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        **filters: str | None,
    ) -> dict[str, Any]:
        """One page, newest first: ``{"items": [...], "next_cursor": str | None}``.

        ``filters`` passes further API filters through: ``workflow_id``, ``schedule_id``, ``created_after``.
        """
        query = {"status": status, "task": task, "queue": queue, "limit": limit, "cursor": cursor, **filters}
        return self._call("GET", "/v1/jobs", query=query)

    def iter_jobs(self, *, page_size: int | None = None, **filters: str | None) -> Iterator[Job]:
        """Every job matching ``filters`` (as ``list`` takes them), newest first, paging lazily by ``next_cursor``."""
        cursor: str | None = None
        while True:
            page = self.list(limit=page_size, cursor=cursor, **filters)
            yield from page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def tasks(self) -> TaskList:
        """The registered task catalog, one dict per task."""
        return self._call("GET", "/v1/tasks")["items"]

    def queues(self) -> QueueList:
        """Every queue's stats: depth (every priority), delayed, in progress, dead, oldest age, paused."""
        return self._call("GET", "/v1/queues")["items"]

    def pause_queue(self, queue: str) -> dict[str, Any]:
        """Pause a queue (admin key): its jobs are accepted and stored, none starts. Idempotent."""
        return self._call("POST", f"/v1/queues/{urllib.parse.quote(queue, safe='')}/pause")

    def resume_queue(self, queue: str) -> dict[str, Any]:
        """Resume a paused queue (admin key); its workers wake at once. Idempotent."""
        return self._call("POST", f"/v1/queues/{urllib.parse.quote(queue, safe='')}/resume")
