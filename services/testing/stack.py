"""An in-process jobrelay: the real Falcon app, the real worker middleware, a virtual clock; no server.

What ``jobrelay.testing`` (``run``) and the ``jobrelay_stack`` pytest fixture stand on. A job goes
the way it goes in production: the API's validation and submission, the store's rows and outbox,
a message, the worker's claim, the task (sync, or ``async def`` on the worker's event loop), time
limit, result storage, outcome, retry, callback and workflow advance; only the transports are
swapped. The broker is Dramatiq's ``StubBroker`` holding messages until they are due on a virtual
clock, the store is SQLite in a temporary directory (no server, no file elsewhere), and the
messages run one at a time in the caller's thread when ``drain()`` is called, so a test is
deterministic. Retries, delays and backoffs wait on the virtual clock: ``advance(seconds)`` moves
it, and a retry due in 30 s runs at once after ``advance(30)``; the schedules made through the API
tick on it too (the scheduler's own ``Runner`` fires them at each ``advance``).

Flow limits are enforced by the worker's own ``Flow`` middleware, its Redis-backed slots and rate
buckets swapped for twins in memory on the virtual clock (``services/testing/flow.py``): a job over
its rate is ``scheduled`` with ``deferred`` and runs once ``advance()`` passes its token. The
supervisor's hard limits and process isolation are process matters, not modelled.

NOTE: the store is SQLite in a temporary directory, not ``MemoryJobStore`` nor an in-memory SQLite
database. The twin (``shared/store/memory.py``) has the worker's half of the store only (claims,
finishes, leases, outbox): the real API app also lists with keyset cursors and filters, reads dead
letters, workflows, schedules, the task registry, pauses and quotas, and a second implementation of
each would be one more thing the parity suite must hold level. An in-memory SQLite database cannot
serve the stack's threads (the API's group-commit writer and outbox thread, the worker's status
writer): one shared connection would interleave their transactions, and a shared-cache memory
database answers "database table is locked" at once, even to readers, where a file's WAL lets
readers on and makes writers wait out the busy timeout. A temporary file runs the very SQL
production runs and is removed by ``close()``.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import SkipMessage, TimeLimit
from falcon import testing as falcon_testing

from services.api.app import create_app
from services.scheduler.runner import Runner
from services.testing.flow import MemoryRateBuckets, MemorySlots
from services.worker.callbacks import Callbacks
from services.worker.context import use_settings
from services.worker.lifespans import WorkerLifespans
from services.worker.middleware.claims import Claims
from services.worker.middleware.event_loop import AsyncTasks
from services.worker.middleware.flow import Flow
from services.worker.middleware.outcomes import Outcomes
from services.worker.middleware.results import Results
from services.worker.middleware.workflows import WorkflowAdvance
from services.worker.process import declare_actors
from services.worker.status_writer import StatusWriter
from services.worker.tasks import load_task_modules
from shared.broker.bands import new_redis_id
from shared.broker.publishing import publish
from shared.catalog import Catalog
from shared.client import JobrelayClient, error_for_response
from shared.job import utcnow
from shared.lifespans import default_lifespans, use_resources
from shared.results import build_result_storage
from shared.settings import Settings
from shared.store.engine import create_store_engine, migrate
from shared.store.jobs import JobStore
from shared.store.schedules import ScheduleSource, ScheduleStore
from shared.store.tasks import TaskRegistry
from shared.store.workflows import WorkflowStore
from shared.submission.submitter import Submitter
from shared.workflows import WorkflowEngine

log = logging.getLogger(__name__)

#: The owner name of the in-process worker's claims.
OWNER = "jobrelay-testing"
#: The most messages one ``drain()`` runs: a job that keeps re-enqueueing itself at once stops here.
MAX_DRAIN = 10_000


class VirtualClock:
    """Real time plus what ``advance`` added: what makes a delayed message (and a schedule's tick) due."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def now_ms(self) -> int:
        return int((time.time() + self.offset_s) * 1000)

    def now(self) -> datetime:
        return datetime.fromtimestamp(time.time() + self.offset_s, UTC)

    def monotonic(self) -> float:
        return time.monotonic() + self.offset_s

    def sleep(self, seconds: float) -> None:
        self.offset_s += max(0.0, seconds)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self.offset_s += seconds


class _AlwaysLeader:
    """The scheduler's leader lease, held for good: the test's process is the only scheduler."""

    is_leader = True


class _NoRedis:
    """What the API's readiness probe pings in place of Redis: there is none, and none is needed."""

    def ping(self) -> bool:
        return True


class MemoryBroker(StubBroker):
    """A ``StubBroker`` whose messages wait in one list, ordered by when they fall due (virtual time)."""

    client: Any = _NoRedis()

    def __init__(self, clock: VirtualClock, middleware: list[Any]) -> None:
        super().__init__(middleware=middleware)
        self.clock = clock
        self._due: list[tuple[int, int, dramatiq.Message[Any]]] = []
        self._order = itertools.count()
        #: Every job id a message was enqueued for (the API publishes from a background thread).
        self.seen: set[str] = set()

    def enqueue(self, message: dramatiq.Message[Any], *, delay: int | None = None) -> dramatiq.Message[Any]:
        # NOTE: the JSON round trip a real broker makes: a task sees its args as they were encoded.
        message = dramatiq.Message.decode(message.encode())
        # Each delivery's own id, as Redis gives one (the flow limits track slots by it).
        message.options["redis_message_id"] = new_redis_id(message.options.get("priority"))
        self.seen.add(message.message_id)
        heapq.heappush(self._due, (self.clock.now_ms() + max(0, delay or 0), next(self._order), message))
        return message

    def take_due(self) -> dramatiq.Message[Any] | None:
        if self._due and self._due[0][0] <= self.clock.now_ms():
            return heapq.heappop(self._due)[2]
        return None

    def next_due_ms(self) -> int | None:
        return self._due[0][0] if self._due else None

    def waiting(self) -> int:
        return len(self._due)


class InProcessClient(JobrelayClient):
    """``JobrelayClient`` calling the Falcon app in this process (no socket), with the same errors."""

    def __init__(self, app: Any) -> None:
        super().__init__("http://jobrelay.testing", "")
        self._app = falcon_testing.TestClient(app)

    def __repr__(self) -> str:
        return "InProcessClient()"

    def _call(self, method: str, path: str, *, body: Any = None, query: Mapping[str, Any] | None = None) -> Any:
        params = {k: str(v) for k, v in (query or {}).items() if v is not None}
        headers = {"Accept": "application/json, application/problem+json"}
        result = self._app.simulate_request(
            method,
            path,
            params=params or None,
            body=None if body is None else json.dumps(body),
            headers=headers if body is None else {**headers, "Content-Type": "application/json"},
        )
        content_type = (result.headers.get("content-type") or "").split(";")[0].strip()
        if result.status_code >= 400:
            raise error_for_response(result.status_code, content_type, result.content, method=method, path=path)
        if not result.content:
            return None
        return json.loads(result.content) if content_type.endswith("json") else result.content


class JobrelayStack:
    """The API, store, broker and one worker of a test, in this process; ``close()`` when done."""

    def __init__(
        self,
        *,
        catalog: Catalog | None = None,
        resources: Mapping[str, Any] | None = None,
        lifespans: list[Callable[..., Any]] | None = None,
        startup_timeout_s: float = 60.0,
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="jobrelay-testing-"))
        try:
            self._open(catalog, resources, lifespans, startup_timeout_s)
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def _open(
        self,
        catalog: Catalog | None,
        resources: Mapping[str, Any] | None,
        lifespans: list[Callable[..., Any]] | None,
        startup_timeout_s: float,
    ) -> None:
        self.catalog = catalog or load_task_modules()
        self.settings = Settings(
            database_url=f"sqlite:///{self.dir / 'jobs.db'}",
            data_dir=self.dir,
            api_auth=False,
            worker_metrics=False,
            worker_startup_timeout_s=startup_timeout_s,
        )
        use_settings(self.settings)
        self.clock = VirtualClock()
        engine = create_store_engine(self.settings.effective_database_url)
        migrate(engine)
        self.store = JobStore(engine)
        self.registry = TaskRegistry(engine, cache_s=0)
        self.registry.register(self.catalog.specs(), registered_by=OWNER)
        results = build_result_storage(self.settings.effective_result_storage_url)
        callbacks = Callbacks(
            self.catalog,
            self.registry,
            publish=lambda jobs: publish(self.broker, jobs),
            outbox_sent=self.store.outbox_sent,
        )
        callbacks.warn_unknown()
        writes = StatusWriter(self.store, callbacks=callbacks)
        claims = Claims(self.store, writes, results, owner=OWNER, lease_s=self.settings.job_lease_s)
        # The worker's Flow, first as in a worker, its slots and rate buckets in memory on the virtual clock.
        flow = Flow(
            self.catalog,
            client=None,
            store=self.store,
            claims_ahead=claims.reservations,
            owner=OWNER,
            namespace="jobrelay-testing",
            slot_ttl_s=self.settings.job_lease_s,
            slots=MemorySlots(lambda body: self.broker.enqueue(dramatiq.Message.decode(body))),
            buckets=MemoryRateBuckets(self.clock.now_ms),
        )
        middleware: list[Any] = [flow, claims]
        self.broker = MemoryBroker(self.clock, middleware)
        workflow_engine = WorkflowEngine(WorkflowStore(engine), self.store, self.registry, self.broker)  # type: ignore[arg-type]
        workflows = WorkflowAdvance(claims, workflow_engine.advance)
        self.outcomes = Outcomes(
            self.store, writes, self.catalog, claims=claims, workflows=workflows, acker=None, owner=OWNER
        )
        # NOTE: given resources replace the lifespans (fakes for tests): none are entered then.
        self.lifespans = WorkerLifespans(
            [] if resources is not None else (default_lifespans.lifespans() if lifespans is None else lifespans),
            startup_timeout_s=startup_timeout_s,
        )
        # The worker's list (``build_worker_broker``) without the parts that need Redis or processes.
        for extra in (
            workflows,
            self.outcomes,
            Results(claims, results, inline_max_bytes=self.settings.result_inline_max_bytes),
            TimeLimit(interval=50),
            AsyncTasks(),
            self.lifespans,
        ):
            self.broker.add_middleware(extra)
        declare_actors(self.broker, self.catalog)  # type: ignore[arg-type]
        self.broker.emit_after("process_boot")
        self.broker.emit_before("worker_boot", self)
        self._booted = True
        if resources is not None:
            use_resources(resources)
        self.app = create_app(self.settings, store=self.store, registry=self.registry, broker=self.broker)  # type: ignore[arg-type]
        self._schedules = ScheduleStore(engine)
        self._runner = Runner(
            scheduler=None,  # NOTE: unused: advance() fires the schedules itself.
            schedules=self._schedules,
            submitter=Submitter(self.store, self.registry, self.broker, self.settings.api_max_body_bytes),  # type: ignore[arg-type]
            lease=_AlwaysLeader(),  # type: ignore[arg-type]
            housekeeping={},
            clock=self.clock,
        )
        self.client = InProcessClient(self.app)

    # -- what a test calls -----------------------------------------------------

    def submit(self, task: str | Callable[..., Any], args: Mapping[str, Any] | None = None, **options: Any) -> str:
        """Submit through the API app; the job's id. A bad request raises with the API's message."""
        job = self.client.submit(self.task_name(task), args, **options)
        return cast(str, job["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        """The job as ``GET /v1/jobs/{id}`` shows it."""
        return cast(dict[str, Any], self.client.get(job_id))

    def drain(self) -> int:
        """Run every job that is due (callbacks and workflow steps too) until none is; how many ran."""
        ran = 0
        self._settle()
        while (message := self.broker.take_due()) is not None:
            self._process(message)
            ran += 1
            if ran >= MAX_DRAIN:
                raise RuntimeError(f"drain() ran {MAX_DRAIN} messages and more are due: a job re-enqueues itself?")
        return ran

    def _settle(self, timeout_s: float = 10.0) -> None:
        """Wait until every job the API committed as published is in the broker.

        NOTE: the API answers a submission once its rows are committed and publishes them from its
        writer's background thread right after; without this a drain could miss a job just submitted.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            published = self.store.waiting_published(older_than=utcnow() + timedelta(days=1))
            missing = [job.id for job in published if job.id not in self.broker.seen]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"jobs {missing[:5]} were committed as published but never reached the broker")
            time.sleep(0.002)

    def advance(self, seconds: float) -> None:
        """Move the virtual clock: delayed jobs, retries and schedule ticks due by then fall due (``drain``)."""
        self.clock.advance(seconds)
        # NOTE: the scheduler's own firing (misfire policy, one job per tick) on the virtual clock.
        for schedule in self._schedules.all():
            if schedule.enabled and schedule.source != ScheduleSource.BUILTIN:
                self._runner.fire(schedule.id)

    def run_until_final(self, job_id: str, *, max_steps: int = 1000) -> dict[str, Any]:
        """Drain, moving the clock to the next due message, until the job is final; its view."""
        for _ in range(max_steps):
            self.drain()
            view = self.job(job_id)
            if view["status"] in ("succeeded", "failed", "cancelled", "expired"):
                return view
            due_ms = self.broker.next_due_ms()
            if due_ms is None:
                raise RuntimeError(f"job {job_id} is {view['status']} and nothing is due to move it on")
            self.clock.advance(max(0.0, (due_ms - self.clock.now_ms()) / 1000))
        raise RuntimeError(f"job {job_id} is not final after {max_steps} steps")

    def task_name(self, task: str | Callable[..., Any]) -> str:
        if isinstance(task, str):
            return task
        for definition in self.catalog.definitions():
            if definition.fn is task:
                return definition.spec.name
        raise ValueError(f"{getattr(task, '__qualname__', task)!r} is not a task: declare it with @task")

    def close(self) -> None:
        if getattr(self, "_booted", False):
            self._booted = False
            self.lifespans.exit_deadline = time.monotonic() + 30
            self.broker.emit_after("worker_shutdown", self)
            self.outcomes.close()
        use_resources(None)
        use_settings(None)
        self.store.engine.dispose()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> JobrelayStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one message, as Dramatiq's WorkerThread.process_message runs it --------

    def _process(self, message: dramatiq.Message[Any]) -> None:
        proxy = MessageProxy(message)
        broker = self.broker
        try:
            broker.emit_before("process_message", proxy)
            result = None
            if not proxy.failed:
                actor = broker.get_actor(message.actor_name)
                result = actor(*message.args, **message.kwargs)
            broker.emit_after("process_message", proxy, result=result)
        except SkipMessage:
            broker.emit_after("skip_message", proxy)
        except BaseException as exc:
            proxy.stuff_exception(exc)
            broker.emit_after("process_message", proxy, exception=exc)
        if proxy.failed:
            broker.emit_before("nack", proxy)
            broker.emit_after("nack", proxy)
