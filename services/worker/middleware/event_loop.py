"""Async tasks: one event loop per worker process, where every ``async def`` task's coroutine runs.

Dramatiq runs an ``async def`` actor through its ``AsyncIO`` middleware: one event-loop
thread per process, and the worker thread that took the message waits for the coroutine
(``dramatiq/asyncio.py``, ``EventLoopThread.run_coroutine``). ``AsyncTasks`` is that
middleware with a ``run_coroutine`` that treats a job as a sync task's is treated:

- the coroutine runs in a copy of the worker thread's context, so ``current_job()``,
  ``report_progress``, ``result_file`` and the log fields see its job;
- whatever the waiting worker thread is interrupted with (Dramatiq's ``TimeLimitExceeded`` at
  the soft limit, the watchdog's ``Cancelled``) reaches the coroutine as ``CancelledError`` at
  its current ``await``. The thread waits for it to unwind: a coroutine that ends with that
  ``CancelledError`` ends the job with the interrupt, so the outcome is recorded exactly as for
  a sync task; whatever else it ends with (it caught the cancellation) is its outcome, as a sync
  task that caught the exception. Dramatiq's own version reacts only to its ``Interrupt``
  exceptions (not ``Cancelled``) and gives up after one second with a ``RuntimeError``, leaving
  the coroutine running beside its retry;
- a coroutine that never ends after its cancellation (it swallows it, or blocks the loop) keeps
  its worker thread, as a sync task stuck in C code does: at its hard limit, or its cancel grace,
  the supervisor kills and replaces the process (``services/worker/limits.py``).

An async job holds its worker thread while it awaits (one job per thread, as a sync job): the
thread sleeps on the coroutine's future, so ``WORKER_THREADS`` is the number of jobs, sync and
async together, a process runs at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from dramatiq.asyncio import EventLoopThread, get_event_loop_thread, set_event_loop_thread
from dramatiq.broker import Broker
from dramatiq.middleware import AsyncIO

log = logging.getLogger(__name__)

R = TypeVar("R")

#: How often a worker thread waiting on a coroutine runs Python code, so an interrupt lands.
POLL_S = 0.1
#: A coroutine still unwinding this long after its cancellation is logged (once).
UNWIND_WARNING_S = 5.0


class EventLoopStopped(RuntimeError):
    """The loop stopped (the worker shut down) while a task's coroutine was still running on it."""


class _Run:
    """One coroutine's start and cancel, both done on the loop's thread (so they cannot race)."""

    def __init__(self, awaitable: Awaitable[Any], context: contextvars.Context) -> None:
        self.awaitable = awaitable
        self.context = context
        self.outcome: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.task: asyncio.Task[Any] | None = None
        self.cancelled = False
        #: The ``CancelledError`` the coroutine ended with, if it did (its traceback: where it was).
        self.unwound: BaseException | None = None

    def start(self) -> None:
        if self.cancelled:
            return
        self.task = asyncio.get_running_loop().create_task(_awaited(self.awaitable), context=self.context)
        self.task.add_done_callback(self._settle)

    def cancel(self) -> None:
        self.cancelled = True
        if self.task is not None:
            self.task.cancel()
        elif not self.outcome.done():
            # Interrupted before it started: it never will.
            _close(self.awaitable)
            self._end(asyncio.CancelledError())

    def _settle(self, task: asyncio.Task[Any]) -> None:
        try:
            self.outcome.set_result(task.result())
        except asyncio.CancelledError as exc:
            self._end(exc)
        except BaseException as exc:
            self.outcome.set_exception(exc)

    def _end(self, cancelled: BaseException) -> None:
        self.unwound = cancelled
        self.outcome.set_exception(cancelled)


async def _awaited(awaitable: Awaitable[R]) -> R:
    return await awaitable


def _close(awaitable: Awaitable[Any]) -> None:
    close = getattr(awaitable, "close", None)
    if close is not None:
        close()


class JobEventLoop(EventLoopThread):
    """The event loop thread of a worker process; see the module docstring for ``run_coroutine``."""

    def __init__(self, logger: logging.Logger, *, poll_s: float = POLL_S) -> None:
        super().__init__(logger, interrupt_check_ival=poll_s)
        self.name = "jobrelay-event-loop"
        self.daemon = True

    def run_coroutine(self, coro: Awaitable[R]) -> R:
        """Run ``coro`` on the loop in this thread's context; this thread waits, interruptible."""
        if not self.loop.is_running():
            _close(coro)
            raise RuntimeError("the event loop of async tasks is not running")
        run = _Run(coro, contextvars.copy_context())
        try:
            self.loop.call_soon_threadsafe(run.start)
            self._wait(run.outcome)
        except EventLoopStopped:
            raise
        except BaseException as interrupt:
            # NOTE: raised into this thread asynchronously (TimeLimitExceeded, Cancelled). A
            # coroutine already done when it landed keeps its outcome, as a sync task past its return.
            if not run.outcome.done():
                self.loop.call_soon_threadsafe(run.cancel)
                self._wait_out(run.outcome)
                if run.unwound is not None:
                    # Its context, the coroutine's CancelledError, shows where the task was.
                    interrupt.__context__ = run.unwound
                    raise
        return run.outcome.result()

    def _wait(self, outcome: concurrent.futures.Future[Any]) -> None:
        # NOTE: in short waits: an exception raised into this thread lands only when it runs Python code.
        while not outcome.done():
            concurrent.futures.wait((outcome,), timeout=self.interrupt_check_ival)
            if not outcome.done() and not self.loop.is_running():
                raise EventLoopStopped("the event loop of async tasks stopped before the task ended")

    def _wait_out(self, outcome: concurrent.futures.Future[Any]) -> None:
        """Wait for a cancelled coroutine to unwind; later interrupts (a cancel after the time limit) are dropped."""
        warn_at = time.monotonic() + UNWIND_WARNING_S
        while not outcome.done():
            try:
                self._wait(outcome)
            except EventLoopStopped:
                raise
            except BaseException as later:
                log.info("dropped %s: the task is already being cancelled", type(later).__name__)
            if warn_at and time.monotonic() > warn_at:
                log.warning("the task is still unwinding %.0fs after its cancellation", UNWIND_WARNING_S)
                warn_at = 0.0


class AsyncTasks(AsyncIO):
    """Dramatiq's ``AsyncIO`` middleware, running async tasks on a ``JobEventLoop``."""

    def before_worker_boot(self, broker: Broker, worker: object) -> None:
        event_loop = JobEventLoop(log)
        event_loop.start(timeout=5.0)
        set_event_loop_thread(event_loop)

    def after_worker_shutdown(self, broker: Broker, worker: object) -> None:
        # NOTE: after the worker threads were joined (or their grace ran out): a coroutine still
        # running is dropped with the loop, and its thread's wait ends with a RuntimeError.
        event_loop = get_event_loop_thread()
        if event_loop is not None:
            event_loop.stop()
        set_event_loop_thread(None)
