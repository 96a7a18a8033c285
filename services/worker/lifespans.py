"""Running the worker lifespans of a process: enter them in order at start, exit them in reverse at stop.

A sync lifespan's steps run on one daemon thread of this module's, an async lifespan's on the
process's event loop (the one ``async def`` tasks run on, ``middleware/event_loop.py``), so a
loop-bound client it yields works in those tasks. Every step has a deadline: a start that has not
yielded within ``WORKER_STARTUP_TIMEOUT_S`` fails the start as an error would, and the exits share
what is left of the stop's grace; a stuck step is left behind on its daemon thread or cancelled on
the loop, never waited out.

``WorkerLifespans`` is the middleware that does this in a worker process: its ``before_worker_boot``
runs after ``AsyncTasks`` started the loop and before any worker thread exists, and its
``after_worker_shutdown`` runs after the worker threads finished their jobs and before the loop stops.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from dramatiq.asyncio import get_event_loop_thread
from dramatiq.broker import Broker
from dramatiq.middleware import Middleware, MiddlewareError

from services.worker.middleware.event_loop import JobEventLoop
from shared.errors import LifespanError
from shared.lifespans import lifespan_name, use_resources

log = logging.getLogger(__name__)

#: A worker process whose lifespan failed to start exits with this (EX_CONFIG): the supervisor stops
#: instead of restarting it in a loop.
LIFESPAN_FAILED_EXIT_CODE = 78
#: The least time an exit step is given, even when the stop's grace is spent.
MIN_EXIT_S = 1.0


class _StepThread:
    """One daemon thread running the sync lifespans' steps in turn (a stuck step never blocks exit)."""

    def __init__(self) -> None:
        self._calls: queue.Queue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = queue.Queue()
        self._thread: threading.Thread | None = None

    def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="jobrelay-lifespans", daemon=True)
            self._thread.start()
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._calls.put((fn, future))
        return future

    def _serve(self) -> None:
        while True:
            fn, future = self._calls.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)


class _Entered:
    """A lifespan past its ``yield``: the generator to resume at exit."""

    def __init__(self, name: str, generator: Any, is_async: bool) -> None:
        self.name, self.generator, self.is_async = name, generator, is_async


class LifespanStack:
    """The lifespans of one process (or one ``jobrelay.testing.run``), entered and exited once."""

    def __init__(
        self,
        lifespans: list[Callable[..., Any]],
        *,
        loop: asyncio.AbstractEventLoop | None,
        startup_timeout_s: float,
    ) -> None:
        self.lifespans = lifespans
        self.loop = loop
        self.startup_timeout_s = startup_timeout_s
        self._steps = _StepThread()
        self._entered: list[_Entered] = []

    def enter(self) -> dict[str, Any]:
        """Enter every lifespan in order; their merged resources. Raises ``LifespanError`` naming the one that failed.

        The ones entered before a failure are exited again (in reverse) before the error is raised.
        """
        merged: dict[str, Any] = {}
        owners: dict[str, str] = {}
        for fn in self.lifespans:
            name = lifespan_name(fn)
            try:
                given = self._start(fn, name)
                if given is None:
                    given = {}
                if not isinstance(given, Mapping):
                    raise LifespanError(f"yielded {type(given).__name__}, not a mapping of resources")
                for key in given:
                    if key in owners:
                        raise LifespanError(f"resource {key!r} is also given by worker lifespan {owners[key]}")
                    owners[key] = name
                merged.update(given)
            except Exception as exc:
                error = LifespanError(f"worker lifespan {name} failed at start: {_describe(exc)}")
                self.exit(timeout_s=self.startup_timeout_s)
                raise error from exc
        return merged

    def _start(self, fn: Callable[..., Any], name: str) -> Any:
        generator = fn()
        is_async = hasattr(generator, "__anext__")
        future = self._step(generator, is_async)
        try:
            given = future.result(timeout=self.startup_timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise LifespanError(f"it has not yielded within {self.startup_timeout_s:g}s") from None
        except (StopIteration, StopAsyncIteration):
            raise LifespanError("it returned without yielding its resources") from None
        self._entered.append(_Entered(name, generator, is_async))
        return given

    def _step(self, generator: Any, is_async: bool) -> concurrent.futures.Future[Any]:
        if not is_async:
            return self._steps.submit(lambda: next(generator))
        if self.loop is None or not self.loop.is_running():
            raise LifespanError("an async lifespan needs the worker's event loop, which is not running")
        return asyncio.run_coroutine_threadsafe(_anext(generator), self.loop)

    def exit(self, *, timeout_s: float) -> None:
        """Exit the entered lifespans in reverse; an error or a stuck exit is logged and the others still exit."""
        deadline = time.monotonic() + timeout_s
        while self._entered:
            entered = self._entered.pop()
            try:
                future = self._step(entered.generator, entered.is_async)
                future.result(timeout=max(MIN_EXIT_S, deadline - time.monotonic()))
            except (StopIteration, StopAsyncIteration):
                continue
            except concurrent.futures.TimeoutError:
                future.cancel()
                log.error("worker lifespan %s did not finish its exit in time; left behind", entered.name)
                continue
            except Exception:
                log.exception("worker lifespan %s failed at exit", entered.name)
                continue
            log.error(
                "worker lifespan %s yielded more than once; its exit code after the second yield is skipped",
                entered.name,
            )


async def _anext(generator: Any) -> Any:
    return await generator.__anext__()


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, LifespanError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ProcessLifespans:
    """The lifespans of a process that has no Dramatiq worker of its own (an isolation child).

    Its async lifespans get an event loop of their own in that process (``JobEventLoop``).
    """

    def __init__(self, lifespans: list[Callable[..., Any]], *, startup_timeout_s: float, exit_timeout_s: float) -> None:
        self.lifespans = lifespans
        self.startup_timeout_s = startup_timeout_s
        self.exit_timeout_s = exit_timeout_s
        self._loop: JobEventLoop | None = None
        self._stack: LifespanStack | None = None

    def enter(self) -> None:
        """Enter them and publish their resources; ``LifespanError`` naming the one that failed."""
        if any(inspect.isasyncgenfunction(fn) for fn in self.lifespans):
            self._loop = JobEventLoop(log)
            self._loop.start(timeout=5.0)
        loop = self._loop.loop if self._loop is not None else None
        self._stack = LifespanStack(self.lifespans, loop=loop, startup_timeout_s=self.startup_timeout_s)
        try:
            use_resources(self._stack.enter())
        except BaseException:
            self._stop_loop()
            raise

    def exit(self) -> None:
        if self._stack is not None:
            self._stack.exit(timeout_s=self.exit_timeout_s)
            self._stack = None
        use_resources(None)
        self._stop_loop()

    def _stop_loop(self) -> None:
        if self._loop is not None:
            self._loop.stop()
            self._loop = None


class LifespanFailed(MiddlewareError):
    """A lifespan failed at the start of a worker process (raised out of ``Worker.start``)."""

    def __init__(self, error: LifespanError) -> None:
        super().__init__(error.detail)
        self.error = error


class WorkerLifespans(Middleware):
    """Enters the process's lifespans before its worker threads start; exits them once they stopped."""

    def __init__(self, lifespans: list[Callable[..., Any]], *, startup_timeout_s: float) -> None:
        self.lifespans = lifespans
        self.startup_timeout_s = startup_timeout_s
        self.stack: LifespanStack | None = None
        #: Set by the process when its stop begins: the exits share what is left of the grace.
        self.exit_deadline: float | None = None

    def before_worker_boot(self, broker: Broker, worker: object) -> None:
        event_loop = get_event_loop_thread()
        self.stack = LifespanStack(
            self.lifespans,
            loop=event_loop.loop if event_loop is not None else None,
            startup_timeout_s=self.startup_timeout_s,
        )
        try:
            merged = self.stack.enter()
        except LifespanError as exc:
            # NOTE: a MiddlewareError: Dramatiq's emit_before re-raises only those, so Worker.start
            # fails here, before any worker thread could take a job.
            raise LifespanFailed(exc) from exc
        use_resources(merged)
        if self.lifespans:
            log.info("worker lifespans entered: %s", ", ".join(lifespan_name(fn) for fn in self.lifespans))

    def after_worker_shutdown(self, broker: Broker, worker: object) -> None:
        if self.stack is None:
            return
        left_s = self.exit_deadline - time.monotonic() if self.exit_deadline is not None else 30.0
        self.stack.exit(timeout_s=max(MIN_EXIT_S, left_s))
        use_resources(None)
