"""The parent side of process isolation: each worker thread's child, and the thread's wait on it.

A worker thread that takes a job of an ``isolation="process"`` task hands it to the
child it owns (started on first use from the process's forkserver, which imported the
task modules once: Celery's prefork, one child per thread slot) and waits on the pipe in
short polls, so whatever is raised into the thread lands within ``POLL_S``, whatever
the child does with its own GIL:

- ``Cancelled`` (the watchdog), or any other interrupt: the child is killed at once and
  the interrupt ends the job as it would a thread task's;
- Dramatiq's ``TimeLimitExceeded`` (the soft limit): passed on to the child as
  ``SOFT_LIMIT_SIGNAL`` (the task gets ``TimeLimitExceeded``, as in a thread); a child
  that has not answered by the hard limit (the soft one plus ``max(5 s, 10%)``) is
  killed and the job fails with ``HardTimeLimitExceeded``; the worker process lives on;
- the child dies (a segfault, ``os.abort()``, the OOM killer): the job fails with
  ``WorkerCrashed`` naming the signal, by its task's retry policy.

A killed child is replaced by the thread's next isolated job; so is one past
``MAX_JOBS_PER_CHILD`` or ``MAX_MEMORY_PER_CHILD_MB`` after a job (``recycling.py``).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
import time
from dataclasses import dataclass, field
from multiprocessing import forkserver
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

from dramatiq.broker import Broker
from dramatiq.middleware import Middleware
from dramatiq.middleware.time_limit import TimeLimitExceeded

from services.worker.context import JobContext
from services.worker.crashes import died_of
from services.worker.isolation.child import SOFT_LIMIT_SIGNAL, Done, Progress, Raised, Run, serve
from services.worker.limits import hard_limit_s
from services.worker.middleware.outcomes import HardTimeLimitExceeded
from services.worker.recycling import RecycleLimits, rss_bytes
from services.worker.tasks import BUILTIN_TASK_MODULES
from shared import metrics, tracing
from shared.errors import PermanentTaskFailure
from shared.settings import Settings

log = logging.getLogger(__name__)

#: How often a waiting thread runs Python code, so an exception raised into it lands.
POLL_S = 0.1
#: How long a child told to stop may take before it is killed.
STOP_GRACE_S = 2.0


class WorkerCrashed(Exception):
    """The child running the job died under it: ``worker process died: SIGSEGV`` (as ``crashes.py`` records)."""


class IsolatedTaskError(Exception):
    """Stands for a task's exception that could not be carried back from its child (it does not pickle)."""


class RemoteTraceback(Exception):
    """The traceback of the child where the task raised, as the cause of the exception raised here."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


def exception_of(raised: Raised) -> BaseException:
    """The task's exception, as it was when it pickles, or one of the same name and message otherwise."""
    exc = raised.exception
    if exc is None:
        base: type[Exception] = PermanentTaskFailure if raised.non_retryable else IsolatedTaskError
        exc = type(raised.type_name, (base,), {"__module__": raised.module})(raised.message)
    exc.__cause__ = RemoteTraceback(raised.traceback)
    return exc


@dataclass(eq=False)
class Child:
    """One long-lived child process of a worker thread."""

    process: BaseProcess
    conn: Connection
    jobs: int = 0
    #: Sent the soft-limit signal: replaced after its job, whatever it answered.
    tainted: bool = False
    started_s: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def kill(self) -> None:
        self.process.kill()
        self.process.join(5)
        self.conn.close()

    def stop(self) -> None:
        """Ask it to end between jobs; killed if it does not within ``STOP_GRACE_S``."""
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.process.join(STOP_GRACE_S)
        if self.process.is_alive():
            self.kill()
        self.conn.close()


class IsolatedTasks(Middleware):
    """The isolation children of a worker process, one per worker thread that ran an isolated job."""

    def __init__(
        self, settings: Settings, limits: RecycleLimits, *, start_method: str = "forkserver", prestart: bool = False
    ) -> None:
        self.settings = settings
        self.limits = limits
        self.start_method = start_method
        #: Start the forkserver at worker boot (the catalog has isolated tasks), not at the first job.
        self.prestart = prestart
        self._context: BaseContext | None = None
        self._local = threading.local()
        self._children: set[Child] = set()
        self._lock = threading.Lock()
        self._closing = threading.Event()

    # -- what the actor runs ------------------------------------------------------

    def run(self, context: JobContext, kwargs: dict[str, Any]) -> tuple[Any, str | None]:
        """Run the job in this thread's child; its result and result file type, or what it raised."""
        request = Run(
            context.job_id,
            context.task,
            context.attempt,
            kwargs,
            queue=context.queue,
            max_retries=context.max_retries,
            deadline=context.deadline,
            workflow_id=context.workflow_id,
            traceparent=tracing.traceparent(),
        )
        child = self._child()
        try:
            child.conn.send(request)
        except OSError:
            # It died idle (killed from outside): a new one takes the job.
            self._discard(child)
            child = self._child()
            child.conn.send(request)
        try:
            reply = self._wait(child, context)
        except BaseException:
            self._discard(child)
            raise
        child.jobs += 1
        self._after_job(child)
        if isinstance(reply, Raised):
            raise exception_of(reply)
        return reply.result, reply.result_file_type

    def _wait(self, child: Child, context: JobContext) -> Done | Raised:
        started = time.monotonic()
        hard_at: float | None = None
        reading = False
        while True:
            # NOTE: the whole loop in the try: an interrupt lands at any bytecode.
            try:
                reading = False
                if hard_at is not None and time.monotonic() >= hard_at:
                    limit_s = hard_at - started
                    raise HardTimeLimitExceeded(
                        f"the task ran past its hard time limit of {limit_s:.3g}s; its isolated process was killed"
                    )
                if not child.conn.poll(POLL_S):
                    continue
                reading = True
                message = child.conn.recv()
                reading = False
                if isinstance(message, Progress):
                    self._progress(context, message)
                    continue
                assert isinstance(message, Done | Raised), type(message)
                return message
            except TimeLimitExceeded:
                # NOTE: landed mid-read, the pipe is out of step: the child cannot be trusted to answer.
                if reading or hard_at is not None:
                    raise
                soft_s = time.monotonic() - started
                hard_at = started + hard_limit_s(soft_s)
                child.tainted = True
                log.warning("job %s: past its soft time limit in its isolated process", context.job_id)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, SOFT_LIMIT_SIGNAL)
            except (EOFError, OSError):
                raise self._died(child) from None

    @staticmethod
    def _progress(context: JobContext, message: Progress) -> None:
        try:
            context.sink.report_progress(context.job_id, message.progress)
        except Exception as exc:
            # NOTE: the task cannot hear of it, in another process; its outcome will still be written.
            log.warning("job %s: its progress could not be written: %s", context.job_id, exc)

    def _died(self, child: Child) -> BaseException:
        child.process.join(5)
        code = child.process.exitcode
        if self._closing.is_set():
            # NOTE: the worker shuts down past its grace: like a thread task's, this job is the
            # supervisor's to put back, uncounted. Nothing is recorded here; the thread waits for the exit.
            threading.Event().wait()
        cause = died_of(code) if code is not None else "no exit code"
        log.error("isolated process %d died running its job: %s", child.pid, cause)
        return WorkerCrashed(f"worker process died: {cause}")

    def _after_job(self, child: Child) -> None:
        reason = self.limits.reason(child.jobs, lambda: rss_bytes(child.pid))
        if reason is None and not child.tainted:
            return
        if reason is not None:
            metrics.worker_recycled_total.labels(reason, "isolated").inc()
            log.info("isolated process %d recycled (%s) after %d job(s)", child.pid, reason, child.jobs)
        self._discard(child, gracefully=True)

    # -- children -----------------------------------------------------------------

    def _child(self) -> Child:
        child: Child | None = getattr(self._local, "child", None)
        if child is not None:
            return child
        mp = self._mp()
        parent_end, child_end = mp.Pipe(duplex=True)
        process = mp.Process(  # type: ignore[attr-defined]
            target=serve,
            args=(child_end, self.settings, self.settings.task_modules),
            name=f"jobrelay-isolated-{threading.current_thread().name}",
        )
        process.start()
        child_end.close()
        child = Child(process, parent_end)
        with self._lock:
            self._children.add(child)
        self._local.child = child
        log.info("started isolated process %d for %s", child.pid, threading.current_thread().name)
        return child

    def _mp(self) -> BaseContext:
        with self._lock:
            if self._context is None:
                context = multiprocessing.get_context(self.start_method)
                if self.start_method == "forkserver":
                    # NOTE: imported once, in the forkserver: each child starts forked, its tasks loaded.
                    preload = [serve.__module__, *BUILTIN_TASK_MODULES, *self.settings.task_modules]
                    context.set_forkserver_preload(preload)
                self._context = context
            return self._context

    def _discard(self, child: Child, *, gracefully: bool = False) -> None:
        if getattr(self._local, "child", None) is child:
            self._local.child = None
        with self._lock:
            self._children.discard(child)
        if gracefully:
            child.stop()
        else:
            child.kill()

    def close(self) -> None:
        """Stop every child (at the worker's shutdown, after its threads were joined or their grace ran out)."""
        self._closing.set()
        with self._lock:
            children = list(self._children)
            self._children.clear()
        # NOTE: asked to stop rather than killed, so each exits its worker lifespans; all at once, within
        # one STOP_GRACE_S (a child still in a job when the grace ran out is killed then).
        for child in children:
            with contextlib.suppress(OSError):
                child.conn.send(None)
        deadline = time.monotonic() + STOP_GRACE_S
        for child in children:
            child.process.join(max(0.0, deadline - time.monotonic()))
            if child.process.is_alive():
                child.kill()
            else:
                child.conn.close()

    def after_worker_boot(self, broker: Broker, worker: object) -> None:
        if self.prestart and self.start_method == "forkserver":
            # NOTE: its start imports every task module (a second or more on a busy machine), which the
            # first isolated job would otherwise spend of its time limit; from then on a child is a fork.
            threading.Thread(target=self._start_forkserver, name="jobrelay-forkserver-start", daemon=True).start()

    def _start_forkserver(self) -> None:
        self._mp()
        try:
            forkserver.ensure_running()
        except Exception:
            log.exception("could not start the forkserver of isolated tasks; the first isolated job will")

    def after_worker_shutdown(self, broker: Broker, worker: object) -> None:
        self.close()
