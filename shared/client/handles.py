"""``my_task.submit(**args)`` / ``await my_task.asubmit(**args)``: Celery's ``.delay()`` habit, checked first.

``@task`` gives the declared function these methods. The arguments are validated against the
task's own JSON schema before anything is sent (the same ``ApiInvalidRequest`` the API would
answer, with the same ``/args/...`` paths), then sent through a client made from
``JOBRELAY_URL``/``JOBRELAY_TOKEN``, or the one given with ``my_task.using(client, queue=...)``.
The answer is a job handle with ``wait()``, ``result()`` and ``cancel()``.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Mapping
from typing import Any, Unpack

from jsonschema import Draft202012Validator

from shared.client import ApiInvalidRequest, Job, JobOptions
from shared.client.aio import AsyncClient
from shared.client.sync import Client


class JobHandle:
    """A submitted job: its last seen state in ``job``, and what can be done with it."""

    def __init__(self, client: Client, job: Job) -> None:
        self.client = client
        self.job = job
        self.id: str = job["id"]

    def __repr__(self) -> str:
        return f"JobHandle({self.id!r}, status={self.job.get('status')!r})"

    def refresh(self) -> Job:
        self.job = self.client.get(self.id)
        return self.job

    def wait(self, timeout_s: float | None = 60.0) -> Job:
        """The job once final (``WaitTimeout`` after ``timeout_s``)."""
        self.job = self.client.wait(self.id, timeout_s=timeout_s)
        return self.job

    def result(self, timeout_s: float | None = 60.0) -> Any:
        """Wait, then the result; a job that did not succeed raises the API's error for its result."""
        self.wait(timeout_s)
        return self.client.result(self.id)

    def cancel(self) -> Job:
        self.job = self.client.cancel(self.id)
        return self.job


class AsyncJobHandle:
    """``JobHandle`` for asyncio code: the same methods, awaited."""

    def __init__(self, client: AsyncClient, job: Job) -> None:
        self.client = client
        self.job = job
        self.id: str = job["id"]

    def __repr__(self) -> str:
        return f"AsyncJobHandle({self.id!r}, status={self.job.get('status')!r})"

    async def refresh(self) -> Job:
        self.job = await self.client.get(self.id)
        return self.job

    async def wait(self, timeout_s: float | None = 60.0) -> Job:
        self.job = await self.client.wait(self.id, timeout_s=timeout_s)
        return self.job

    async def result(self, timeout_s: float | None = 60.0) -> Any:
        await self.wait(timeout_s)
        return await self.client.result(self.id)

    async def cancel(self) -> Job:
        self.job = await self.client.cancel(self.id)
        return self.job


_default_lock = threading.Lock()
_default_client: Client | None = None
# NOTE: an httpx.AsyncClient belongs to the event loop it first ran on; one per loop, dropped with it.
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncClient] = weakref.WeakKeyDictionary()


def default_client() -> Client:
    """One client per process, from ``JOBRELAY_URL``/``JOBRELAY_TOKEN``, made on first use."""
    global _default_client
    with _default_lock:
        if _default_client is None:
            _default_client = Client.from_env()
        return _default_client


def default_async_client() -> AsyncClient:
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = _async_clients[loop] = AsyncClient.from_env()
    return client


class TaskSender:
    """What ``@task`` attaches to a function: ``submit``, ``asubmit`` and ``using``."""

    def __init__(
        self,
        name: str,
        args_schema: Mapping[str, Any],
        *,
        client: Client | None = None,
        async_client: AsyncClient | None = None,
        options: JobOptions | None = None,
    ) -> None:
        self.name = name
        self.args_schema = args_schema
        self.client = client
        self.async_client = async_client
        self.options: JobOptions = options or {}
        self._validator = Draft202012Validator(dict(args_schema))

    def using(self, client: Client | AsyncClient | None = None, **options: Unpack[JobOptions]) -> TaskSender:
        """The same task sent through ``client`` and/or with job options (queue, delay_s, priority, ...)."""
        sync = client if isinstance(client, Client) else self.client
        aio = client if isinstance(client, AsyncClient) else self.async_client
        merged: JobOptions = {**self.options, **options}
        return TaskSender(self.name, self.args_schema, client=sync, async_client=aio, options=merged)

    def validate(self, args: Mapping[str, Any]) -> None:
        """``ApiInvalidRequest`` naming each bad argument by its ``/args/...`` path, as the API would."""
        errors = [
            {"path": "/args" + "".join(f"/{part}" for part in error.absolute_path), "message": error.message}
            for error in sorted(self._validator.iter_errors(dict(args)), key=lambda e: list(e.absolute_path))
        ]
        if errors:
            raise ApiInvalidRequest(f"the arguments of {self.name} are invalid", errors=errors)

    def submit(self, **args: Any) -> JobHandle:
        self.validate(args)
        client = self.client or default_client()
        return JobHandle(client, client.submit(self.name, args, **self.options))

    async def asubmit(self, **args: Any) -> AsyncJobHandle:
        self.validate(args)
        client = self.async_client or default_async_client()
        return AsyncJobHandle(client, await client.submit(self.name, args, **self.options))


def attach(fn: Any, name: str, args_schema: Mapping[str, Any]) -> None:
    """Give a declared task function ``submit``, ``asubmit`` and ``using``."""
    sender = TaskSender(name, args_schema)
    fn.submit = sender.submit
    fn.asubmit = sender.asubmit
    fn.using = sender.using
