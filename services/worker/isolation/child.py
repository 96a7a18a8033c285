"""The child side of process isolation: a loop that runs its worker thread's isolated jobs, one at a time.

Forked from the worker process's forkserver (the task modules already imported there),
it waits on its pipe for a ``Run``, runs the task in its main thread with a job context
of its own (``current_job()``, ``report_progress`` sending ``Progress`` over the pipe,
``result_file`` writing straight into result storage) and answers ``Done`` or ``Raised``.
``None`` or the pipe's end stops it. The parent's thread (``pool.py``) owns every limit:
it signals ``SOFT_LIMIT_SIGNAL`` at the soft time limit (``TimeLimitExceeded`` is raised in
the task, as in a worker thread), and kills this process at the hard limit, on a cancel,
or when its worker process goes.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pickle
import signal
import threading
import traceback
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any

from dramatiq.middleware.time_limit import TimeLimitExceeded

from services.worker.context import JobContext, enter_job, leave_job, use_settings
from services.worker.lifespans import ProcessLifespans
from services.worker.tasks import load_task_modules
from shared import tracing
from shared.catalog import Catalog, TaskDefinition
from shared.errors import LifespanError, PermanentTaskFailure
from shared.lifespans import default_lifespans
from shared.logs import configure_logging, reset_log_context, set_log_context
from shared.results import ResultStorage, build_result_storage
from shared.results.encoding import ResultNotJSON, encode
from shared.settings import Settings

log = logging.getLogger(__name__)

#: Sent by the parent at the job's soft time limit.
SOFT_LIMIT_SIGNAL = signal.SIGUSR1
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Run:
    job_id: str
    task: str
    attempt: int
    kwargs: dict[str, Any]
    #: What ``jobrelay.current_job()`` shows besides: the parent's job context's fields.
    queue: str = ""
    max_retries: int = 0
    deadline: datetime | None = None
    workflow_id: str | None = None
    #: The parent's ``run`` span (``shared/tracing.py``): the child's span, and its task's calls, join its trace.
    traceparent: str | None = None


@dataclass(frozen=True)
class Progress:
    progress: dict[str, Any]


@dataclass(frozen=True)
class Done:
    result: Any
    result_file_type: str | None


@dataclass(frozen=True)
class Raised:
    """What the task raised: the exception itself when it pickles both ways, its description always."""

    exception: BaseException | None
    type_name: str
    module: str
    message: str
    traceback: str
    non_retryable: bool


class _PipeSink:
    """The job context's progress sink in a child: each report goes to the parent, which writes it."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()

    def report_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        with self.lock:
            self.conn.send(Progress(progress))


_in_task = False


def _on_soft_limit(signum: int, frame: FrameType | None) -> None:
    # NOTE: only inside the task: a signal that arrives just after it returned must not break the reply.
    if _in_task:
        raise TimeLimitExceeded()


def serve(conn: Connection, settings: Settings, task_modules: tuple[str, ...]) -> None:
    """The child's whole life: run jobs until told to stop or until the parent is gone."""
    # NOTE: the forkserver is this process's parent, and it exits when the worker process does.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(SOFT_LIMIT_SIGNAL, _on_soft_limit)
    configure_logging("worker", settings.log_level, json_lines=settings.log_json)
    tracing.configure_tracing("worker")
    use_settings(settings)
    catalog = load_task_modules(task_modules)
    results = build_result_storage(settings.effective_result_storage_url)
    sink = _PipeSink(conn)
    # NOTE: a child is a process of its own: it enters the worker lifespans too, and exits them when
    # told to stop (its parent waits STOP_GRACE_S for that).
    lifespans = ProcessLifespans(
        default_lifespans.lifespans(), startup_timeout_s=settings.worker_startup_timeout_s, exit_timeout_s=1.5
    )
    try:
        lifespans.enter()
    except LifespanError as exc:
        log.error("isolation child %d cannot start: %s", os.getpid(), exc.detail)
        _refuse_first(conn, exc)
        return
    stopped = False
    try:
        while True:
            try:
                request = conn.recv()
            except (EOFError, OSError):
                return
            if request is None:
                stopped = True
                return
            try:
                with tracing.span(
                    "isolated run", parent=request.traceparent, attributes={"jobrelay.task": request.task}
                ):
                    reply = _run(catalog, results, sink, request)
                _answer(conn, sink, reply)
            except OSError:
                return
    finally:
        lifespans.exit()
        if stopped:
            # NOTE: a child ends in os._exit (no atexit hooks): hand over its last spans first.
            tracing.flush()


def _refuse_first(conn: Connection, exc: LifespanError) -> None:
    """Answer the job this child was started for with its lifespan's error (retried by the task's policy)."""
    with contextlib.suppress(EOFError, OSError):
        request = conn.recv()
        if request is not None:
            conn.send(raised(exc, None))


def _run(catalog: Catalog, results: ResultStorage, sink: _PipeSink, request: Run) -> Done | Raised:
    global _in_task
    definition = catalog.get(request.task)
    context = JobContext(
        request.job_id,
        request.task,
        request.attempt,
        sink,
        results,
        queue=request.queue,
        max_retries=request.max_retries,
        deadline=request.deadline,
        workflow_id=request.workflow_id,
    )
    job_token = enter_job(context)
    log_token = set_log_context(job_id=request.job_id, task=request.task, queue=request.queue, attempt=request.attempt)
    try:
        try:
            _in_task = True
            result = definition.fn(**request.kwargs)
        finally:
            _in_task = False
    except BaseException as exc:
        return raised(exc, definition)
    finally:
        leave_job(job_token)
        reset_log_context(log_token)
    return Done(result, context.result_file_type)


def _answer(conn: Connection, sink: _PipeSink, reply: Done | Raised) -> None:
    """Send the reply; a result that does not pickle goes as its JSON form, or as the error naming why not."""
    with sink.lock:
        try:
            conn.send(reply)
            return
        except OSError:
            raise
        except Exception as exc:
            # NOTE: pickling failed before anything was written, so the pipe is still in step.
            log.info("the answer does not pickle (%s); sending what it can of it", type(exc).__name__)
        if isinstance(reply, Done):
            try:
                value, _ = encode(reply.result)
                fallback: Done | Raised = Done(value, reply.result_file_type)
            except ResultNotJSON as exc:
                fallback = raised(exc, None)
        else:
            fallback = Raised(None, reply.type_name, reply.module, reply.message, reply.traceback, reply.non_retryable)
        conn.send(fallback)


def raised(exc: BaseException, definition: TaskDefinition | None) -> Raised:
    """``exc`` described for the parent, which rebuilds it (``pool.exception_of``)."""
    non_retryable = isinstance(exc, PermanentTaskFailure) or bool(
        definition and definition.non_retryable_types and isinstance(exc, definition.non_retryable_types)
    )
    try:
        text = "".join(traceback.format_exception(exc))
    except Exception:
        text = "".join(traceback.format_tb(exc.__traceback__)) + f"{type(exc).__name__}: <message unprintable>\n"
    try:
        message = str(exc)
    except Exception:
        message = ""
    carried: BaseException | None = exc
    try:
        # NOTE: an exception whose __init__ takes other arguments than its args pickles but does not unpickle.
        pickle.loads(pickle.dumps(exc))  # noqa: S301 (its own bytes, just made)
    except Exception:
        carried = None
    return Raised(carried, type(exc).__name__, type(exc).__module__, message, text[-8000:], non_retryable)
