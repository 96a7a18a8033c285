"""``BaseClient``: what the sync ``Client`` and the ``AsyncClient`` share, all but the sending itself.

The two differ only in how a request goes out and how a pause is slept; the headers, the
environment, and the decision after each failure or answer (retry after how long, or give up)
live here once, so the twins cannot drift apart. The calls themselves are ``shared/client/calls.py``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Self

import httpx

from shared.client import ConnectionFailed, calls
from shared.client.calls import Call, RetryPolicy


class BaseClient:
    """The jobrelay API at ``base_url`` with a bearer ``token`` (empty: send none)."""

    def __init__(self, base_url: str, token: str = "", *, retry: RetryPolicy | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        #: The headers of every request; httpx drops Authorization on a redirect to another host,
        #: so the token stays with the API.
        self.headers = {"Accept": "application/json, application/problem+json", "User-Agent": "jobrelay-client/2"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> Self:
        """From ``JOBRELAY_URL`` (else ``API_BIND``, else 127.0.0.1:8000) and ``JOBRELAY_TOKEN``."""
        env = os.environ if environ is None else environ
        return cls(calls.default_url(env), env.get("JOBRELAY_TOKEN", ""), **options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    def _pause_after_failure(self, call: Call, attempt: int, exc: httpx.TransportError) -> float:
        """The seconds to wait before sending ``call`` again after ``exc``; ``ConnectionFailed`` to give up."""
        last = attempt >= self.retry.attempts
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            # Never reached the server: safe to send again whatever the call is.
            if last:
                raise ConnectionFailed(
                    f"cannot reach {self.base_url}: {exc}", method=call.method, path=call.path
                ) from exc
        elif last or not call.idempotent:
            raise ConnectionFailed(
                f"connection to {self.base_url} failed: {exc or type(exc).__name__}", method=call.method, path=call.path
            ) from exc
        return self.retry.delay_s(attempt, None)

    def _pause_after_answer(self, call: Call, attempt: int, response: httpx.Response) -> float | None:
        """The seconds to wait before sending ``call`` again after this answer, or None to read it."""
        if response.status_code in calls.RETRY_STATUSES and call.idempotent and attempt < self.retry.attempts:
            return self.retry.delay_s(attempt, response.headers.get("Retry-After"))
        return None

    @staticmethod
    def _read(call: Call, response: httpx.Response) -> Any:
        """The decoded answer, or the typed ``ClientError`` for an error status."""
        return calls.read_answer(call, response.status_code, response.headers.get("content-type", ""), response.content)
