"""``jobrelay worker``: runs N worker processes, replaces any that dies, recovers its messages at once.

A child that exits unexpectedly (``kill -9``, out of memory) has its
fetched-but-unacked messages put back at the front of their queues and its job
leases released before a new child starts, so its work runs again within a
second or two instead of waiting for a heartbeat timeout.

The supervisor is also what a task cannot block: it kills a child whose job ran
past its hard time limit, or still runs after its cancel grace (``limits.py``),
even while that job holds the child's GIL, and it beats for its live children
(``pulse.py``), so a GIL-holding task never makes its child look dead.
The attempts a child died under count, by their task's retry policy, and a
death that counted one restarts its slot at once: the job's backoff, not the
slot's crash-loop pause, keeps a task that kills its process from looping
(``crashes.py``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import start_http_server
from prometheus_client.core import CollectorRegistry

from services.worker.crashes import CrashRecovery, died_of
from services.worker.fault_report import Location, task_locations
from services.worker.held_jobs import held_jobs_path, read_attempts
from services.worker.lifespans import LIFESPAN_FAILED_EXIT_CODE
from services.worker.limits import KILL_TIME_LIMIT, Kill, overdue
from services.worker.pulse import ChildPulse, LiveChild
from services.worker.recycling import RECYCLED_EXIT_CODE
from services.worker.tasks import load_task_modules
from shared import metrics
from shared.broker.connections import connect
from shared.broker.orphans import LostAttempts
from shared.broker.publishing import build_broker
from shared.ids import new_id
from shared.logs import configure_logging
from shared.metrics import MULTIPROC_ENV, fresh_multiproc_dir, mark_process_dead, multiprocess_collector
from shared.processes import spawn
from shared.settings import Settings
from shared.store.engine import create_store_engine, migrate
from shared.store.jobs import JobStore
from shared.store.tasks import TaskRegistry

log = logging.getLogger(__name__)
#: A child that dies sooner than this after its start counts towards a crash loop.
CRASH_LOOP_WINDOW_S = 5.0
#: The longest a slot in a crash loop waits before its next start.
MAX_RESTART_DELAY_S = 30.0
#: How often the supervisor looks at its children: deaths, limits, cancels.
POLL_S = 0.2


def restart_delay_s(young_deaths: int) -> float:
    """How long a slot waits to start again after ``young_deaths`` young deaths in a row.

    The first is restarted at once (a process killed or replaced by the hard time limit soon
    after its start is not a crash loop); from the second on the wait doubles from 1 s.
    """
    if young_deaths <= 1:
        return 0.0
    return min(MAX_RESTART_DELAY_S, 2.0 ** (young_deaths - 2))


@dataclass
class Child:
    slot: int
    owner: str
    process: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        *,
        queues: list[str],
        processes: int,
        threads: int,
        grace_s: float,
        task_locations: dict[Location, str] | None = None,
    ):
        self.settings = settings
        self.queues = queues
        self.processes = processes
        self.threads = threads
        self.grace_s = grace_s
        self.children: dict[int, Child] = {}
        self.stopping = threading.Event()
        #: Set when a child could not start (a worker lifespan failed): the supervisor stops, exiting 1.
        self.failed = False
        redis_url = settings.require_redis_url("the worker")
        self.client = connect(redis_url, socket_timeout=10)
        self.store = JobStore(create_store_engine(settings.effective_database_url, timeout_s=settings.store_timeout_s))
        self.crashes = CrashRecovery(
            self.client,
            self.store,
            TaskRegistry(self.store.engine),
            build_broker(redis_url, fair_sharing=settings.fair_sharing),
            data_dir=Path(settings.data_dir),
            task_locations=task_locations,
        )
        self.host = socket.gethostname()
        self.data_dir = Path(settings.data_dir)
        self.pulse = ChildPulse(
            self.client,
            self.store,
            heartbeat_s=settings.worker_heartbeat_s,
            lease_s=settings.job_lease_s,
            poll_s=POLL_S,
        )
        #: Why a child was killed on purpose, by slot, until its recovery.
        self.kills: dict[int, Kill] = {}

    def _spawn(self, slot: int) -> Child:
        owner = f"{self.host}-{slot}-{new_id()[-12:]}"
        args = [
            sys.executable, "-m", "services.worker.process",
            "--queues", ",".join(self.queues),
            "--threads", str(self.threads),
            "--owner", owner,
            "--grace", str(self.grace_s),
        ]  # fmt: skip
        process = spawn(args)
        log.info("started worker process %d (slot %d, id %s)", process.pid, slot, owner)
        self.pulse.watch(LiveChild(owner, held_jobs_path(self.data_dir, owner)))
        return Child(slot=slot, owner=owner, process=process)

    def _enforce_limits(self, slot: int, child: Child, cancels_seen: dict[str, float]) -> None:
        """Kill a live child one of whose jobs is past its hard limit or its cancel grace."""
        if slot in self.kills:
            return
        attempts = read_attempts(held_jobs_path(self.data_dir, child.owner))
        kill = overdue(attempts or (), now_s=time.monotonic(), cancels_seen=cancels_seen)
        if kill is None:
            return
        self.kills[slot] = kill
        if kill.reason == KILL_TIME_LIMIT:
            what = f"ran past its hard time limit ({kill.limit_s:g}s)"
        else:
            what = "was cancelled and still runs after its cancel grace"
        log.critical("job(s) %s %s; killing worker process %d", ",".join(sorted(kill.job_ids)), what, child.process.pid)
        child.process.kill()
        metrics.worker_kills_total.labels(kill.reason).inc()
        # Reaped now, its recovery follows in this same poll (the caller polls it next).
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(timeout=1.0)

    def _recover(self, child: Child, *, cause: str | None, kill: Kill | None = None, attempts: int = 30) -> int:
        """Recover a dead child's jobs and messages; how many attempts it died under were counted.

        ``cause``: what it died of (``SIGSEGV``, ``exit code 3``), or None for a stop on purpose;
        ``kill``: why its supervisor killed it, if it did.
        """
        mark_process_dead(child.process.pid)
        self.pulse.forget(child.owner)
        lost: LostAttempts | None = None
        for attempt in range(attempts):
            try:
                # NOTE: the store's step is done once: tried again, its rows would no longer say
                # which old messages to drop.
                if lost is None:
                    lost = self.crashes.settle(child.owner, cause=cause, kill=kill)
                self.crashes.requeue(child.owner, lost)
                return len(lost)
            except Exception as exc:
                log.warning("recovering %s failed (%s); retry %d", child.owner, exc, attempt + 1)
                time.sleep(1)
        return len(lost or ())

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stopping.set())
        if self.stopping.is_set():
            return 0
        for slot in range(self.processes):
            self.children[slot] = self._spawn(slot)
        self.pulse.start()
        # NOTE: a slot in a crash loop waits for its restart here, not in a sleep, so the
        # other slots' deaths are still noticed and recovered at once.
        restart_at: dict[int, float] = {}
        young_deaths: dict[int, int] = {}
        while not self.stopping.wait(POLL_S):
            cancels_seen = self.pulse.cancels_seen()
            for slot, child in list(self.children.items()):
                if slot in restart_at:
                    continue
                code = child.process.poll()
                if code is None:
                    self._enforce_limits(slot, child, cancels_seen)
                    code = child.process.poll() if slot in self.kills else None
                if code is None:
                    continue
                kill = self.kills.pop(slot, None)
                recycled = code == RECYCLED_EXIT_CODE and kill is None
                if recycled:
                    log.info("worker process %d recycled; starting its replacement", child.process.pid)
                elif kill is None:
                    log.error("worker process %d exited with %s; recovering its messages", child.process.pid, code)
                if code == LIFESPAN_FAILED_EXIT_CODE and kill is None:
                    # NOTE: a lifespan that fails at start fails in every new process too: stop, don't loop.
                    log.error(
                        "worker process %d could not start (a worker lifespan failed: its error is "
                        "logged above); stopping the worker",
                        child.process.pid,
                    )
                    self.failed = True
                    self.stopping.set()
                stopped = code in (0, LIFESPAN_FAILED_EXIT_CODE) or kill is not None or recycled
                cause = None if stopped else died_of(code)
                counted = self._recover(child, cause=cause, kill=kill)
                # A kill on purpose is no crash loop, nor is a recycle (however young): its slot starts again at once.
                young = (
                    time.monotonic() - child.started < CRASH_LOOP_WINDOW_S
                    and not counted
                    and kill is None
                    and not recycled
                )
                young_deaths[slot] = young_deaths.get(slot, 0) + 1 if young else 0
                restart_at[slot] = time.monotonic() + restart_delay_s(young_deaths[slot])
            for slot, due in list(restart_at.items()):
                if time.monotonic() >= due and not self.stopping.is_set():
                    del restart_at[slot]
                    self.children[slot] = self._spawn(slot)
        return self._shutdown()

    def _shutdown(self) -> int:
        log.info("stopping %d worker process(es)", len(self.children))
        for child in self.children.values():
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        # NOTE: the limits hold while the children finish their jobs: one stuck past its hard limit
        # or its cancel grace is killed and recorded as at any other time.
        deadline = time.monotonic() + self.grace_s + 5
        while time.monotonic() < deadline:
            live = [(slot, child) for slot, child in self.children.items() if child.process.poll() is None]
            if not live:
                break
            cancels_seen = self.pulse.cancels_seen()
            for slot, child in live:
                self._enforce_limits(slot, child, cancels_seen)
            time.sleep(POLL_S)
        for slot, child in self.children.items():
            if child.process.poll() is None:
                log.error("worker process %d ignored SIGTERM; killing it", child.process.pid)
                child.process.kill()
            child.process.wait()
            # Whatever it still held goes back to the queue for the next worker.
            self._recover(child, cause=None, kill=self.kills.pop(slot, None), attempts=3)
        self.pulse.stop()
        return 1 if self.failed else 0


def serve_metrics(bind: str) -> None:
    host, _, port = bind.rpartition(":")
    registry = CollectorRegistry()
    registry.register(multiprocess_collector(Path(os.environ[MULTIPROC_ENV])))
    start_http_server(int(port), addr=host, registry=registry)


def run(settings: Settings, *, queues: list[str] | None, processes: int, threads: int, grace_s: float) -> int:
    # NOTE: as PID 1 in a container, a process without a handler ignores SIGTERM; take it from the start.
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    configure_logging("worker", settings.log_level, json_lines=settings.log_json)
    catalog = load_task_modules(settings.task_modules)
    engine = create_store_engine(settings.effective_database_url, timeout_s=settings.store_timeout_s)
    migrate(engine)
    TaskRegistry(engine).register(catalog.specs(), registered_by=socket.gethostname())
    chosen = queues or catalog.queues()
    fresh_multiproc_dir(Path(settings.data_dir) / "metrics" / f"worker-{os.getpid()}")
    serve_metrics(settings.worker_metrics_bind)
    log.info("worker supervisor serving queues %s; metrics on %s", ",".join(chosen), settings.worker_metrics_bind)
    supervisor = Supervisor(
        settings,
        queues=chosen,
        processes=processes,
        threads=threads,
        grace_s=grace_s,
        task_locations=task_locations(catalog.definitions()),
    )
    supervisor.stopping = stopping
    return supervisor.run()
