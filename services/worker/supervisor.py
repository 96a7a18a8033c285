"""``jobrelay worker``: runs N worker processes, replaces any that dies, recovers its messages at once.

A child that exits unexpectedly (``kill -9``, out of memory, a hard time
limit) has its fetched-but-unacked messages put back at the front of their
queues and its job leases released before a new child starts, so its work
runs again within a second or two instead of waiting for a heartbeat timeout.
The attempts a child died under count, by their task's retry policy, and a
death that counted one restarts its slot at once: the job's backoff, not the
slot's crash-loop pause, keeps a task that kills its process from looping
(``crashes.py``).
"""

from __future__ import annotations

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

import redis
from prometheus_client import start_http_server
from prometheus_client.core import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from services.worker.crashes import CrashRecovery, died_of
from services.worker.fault_report import Location, task_locations
from services.worker.lifespans import LIFESPAN_FAILED_EXIT_CODE
from services.worker.middleware.watchdog import HARD_LIMIT_EXIT_CODE
from services.worker.tasks import load_task_modules
from shared.broker.orphans import LostAttempts
from shared.broker.publishing import build_broker
from shared.ids import new_id
from shared.logs import configure_logging
from shared.metrics import fresh_multiproc_dir, mark_process_dead
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
        self.client = redis.Redis.from_url(redis_url, socket_timeout=10)
        self.store = JobStore(create_store_engine(settings.effective_database_url, timeout_s=settings.store_timeout_s))
        self.crashes = CrashRecovery(
            self.client,
            self.store,
            TaskRegistry(self.store.engine),
            build_broker(redis_url),
            data_dir=Path(settings.data_dir),
            task_locations=task_locations,
        )
        self.host = socket.gethostname()

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
        return Child(slot=slot, owner=owner, process=process)

    def _recover(self, child: Child, *, cause: str | None, attempts: int = 30) -> int:
        """Recover a dead child's jobs and messages; how many attempts it died under were counted.

        ``cause``: what it died of (``SIGSEGV``, ``exit code 3``), or None for a stop on purpose.
        """
        mark_process_dead(child.process.pid)
        lost: LostAttempts | None = None
        for attempt in range(attempts):
            try:
                # NOTE: the store's step is done once: tried again, its rows would no longer say
                # which old messages to drop.
                if lost is None:
                    lost = self.crashes.settle(child.owner, cause=cause)
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
        # NOTE: a slot in a crash loop waits for its restart here, not in a sleep, so the
        # other slots' deaths are still noticed and recovered at once.
        restart_at: dict[int, float] = {}
        young_deaths: dict[int, int] = {}
        while not self.stopping.wait(0.2):
            for slot, child in list(self.children.items()):
                if slot in restart_at:
                    continue
                code = child.process.poll()
                if code is None:
                    continue
                log.error("worker process %d exited with %s; recovering its messages", child.process.pid, code)
                if code == LIFESPAN_FAILED_EXIT_CODE:
                    # NOTE: a lifespan that fails at start fails in every new process too: stop, don't loop.
                    log.error(
                        "worker process %d could not start (a worker lifespan failed: its error is "
                        "logged above); stopping the worker",
                        child.process.pid,
                    )
                    self.failed = True
                    self.stopping.set()
                cause = None if code in (0, HARD_LIMIT_EXIT_CODE, LIFESPAN_FAILED_EXIT_CODE) else died_of(code)
                counted = self._recover(child, cause=cause)
                young = time.monotonic() - child.started < CRASH_LOOP_WINDOW_S and not counted
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
        deadline = time.monotonic() + self.grace_s + 5
        for child in self.children.values():
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker process %d ignored SIGTERM; killing it", child.process.pid)
                child.process.kill()
                child.process.wait()
            # Whatever it still held goes back to the queue for the next worker.
            self._recover(child, cause=None, attempts=3)
        return 1 if self.failed else 0


def serve_metrics(bind: str) -> None:
    host, _, port = bind.rpartition(":")
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
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
