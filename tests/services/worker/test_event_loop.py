"""The event loop of async tasks: a coroutine runs in its caller's context, and an interrupt cancels it."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from dramatiq.middleware.threading import raise_thread_exception
from dramatiq.middleware.time_limit import TimeLimitExceeded

from services.worker.middleware.event_loop import JobEventLoop

_job: contextvars.ContextVar[str | None] = contextvars.ContextVar("job", default=None)


@pytest.fixture
def event_loop_thread() -> Iterator[JobEventLoop]:
    loop = JobEventLoop(logging.getLogger("tests"))
    loop.start(timeout=5.0)
    yield loop
    loop.stop()


class Caller(threading.Thread):
    """A worker thread waiting on ``run_coroutine``; what it returned or raised is kept."""

    def __init__(self, loop: JobEventLoop, make: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.loop, self.make = loop, make
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        _job.set("job-1")
        try:
            self.result = self.loop.run_coroutine(self.make())
        except BaseException as exc:
            self.error = exc


def test_the_coroutine_sees_the_context_of_the_thread_that_waits(event_loop_thread: JobEventLoop) -> None:
    async def read() -> str | None:
        await asyncio.sleep(0)
        return _job.get()

    caller = Caller(event_loop_thread, read)
    caller.start()
    caller.join(timeout=5)
    assert caller.error is None and caller.result == "job-1"


def test_an_interrupt_of_the_waiting_thread_cancels_the_coroutine_and_is_raised(
    event_loop_thread: JobEventLoop,
) -> None:
    # Given a thread waiting on a coroutine that awaits for long
    started, unwound = threading.Event(), threading.Event()

    async def wait_long() -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            unwound.set()
            raise

    caller = Caller(event_loop_thread, wait_long)
    caller.start()
    assert started.wait(5)
    # When the soft time limit is raised into the thread
    assert caller.ident is not None
    raise_thread_exception(caller.ident, TimeLimitExceeded)
    caller.join(timeout=5)
    # Then the coroutine was cancelled, and the thread raised the interrupt, chained to where it was
    assert not caller.is_alive() and unwound.is_set()
    assert isinstance(caller.error, TimeLimitExceeded)
    assert isinstance(caller.error.__context__, asyncio.CancelledError)


def test_a_coroutine_that_catches_its_cancellation_ends_with_its_own_outcome(event_loop_thread: JobEventLoop) -> None:
    started = threading.Event()

    async def stubborn() -> str:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return "cleaned up"
        return "slept"

    caller = Caller(event_loop_thread, stubborn)
    caller.start()
    assert started.wait(5) and caller.ident is not None
    raise_thread_exception(caller.ident, TimeLimitExceeded)
    caller.join(timeout=5)
    assert caller.error is None and caller.result == "cleaned up"
