"""The supervisor's pulse for its live children: their heartbeats, their leases, their jobs' cancel requests.

A child's own heartbeat thread cannot run while one of its tasks holds the GIL in C code: its
Redis beat would go stale, the orphan requeue would take the live child for dead, and its jobs
would run twice. The supervisor knows its children are alive (``poll()`` is None), so this thread
of the supervisor beats for them too, and renews the leases of the jobs their records say they
hold. It also asks the store, once per poll, which of the jobs they run an operator cancelled:
the supervisor kills a child whose cancelled job still runs after its grace (``limits.py``),
without the child's help.

A pod that dies whole (supervisor and children) beats no more, and is recovered by the orphan
requeue as before.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from services.worker.held_jobs import read_attempts, read_held
from shared.broker.orphans import HEARTBEATS
from shared.store.protocol import JobStoreProtocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveChild:
    """A child the supervisor saw alive: its worker id and its ``HeldJobs`` file."""

    owner: str
    held_path: Path


class ChildPulse(threading.Thread):
    """Beats every ``heartbeat_s``, renews leases every ``lease_s / 3``, checks cancels every ``poll_s``."""

    def __init__(
        self,
        client: redis.Redis,
        store: JobStoreProtocol,
        *,
        heartbeat_s: float,
        lease_s: float,
        poll_s: float = 0.2,
    ) -> None:
        super().__init__(name="jobrelay-child-pulse", daemon=True)
        self.client = client
        self.store = store
        self.heartbeat_s = heartbeat_s
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.stopping = threading.Event()
        #: Held while this thread writes for a child: ``forget`` waits for it (see there).
        self._lock = threading.Lock()
        self._children: dict[str, LiveChild] = {}
        self._cancels: dict[str, float] = {}

    # -- the supervisor's side ---------------------------------------------------

    def watch(self, child: LiveChild) -> None:
        with self._lock:
            self._children[child.owner] = child

    def forget(self, owner: str) -> None:
        """No more beats or lease renewals for ``owner`` once this returns.

        NOTE: called before its recovery: a renewal after the recovery released its leases would
        keep its redelivered jobs from being claimed until the lease passed.
        """
        with self._lock:
            self._children.pop(owner, None)

    def cancels_seen(self) -> dict[str, float]:
        """Running jobs an operator cancelled -> when (monotonic) this thread first saw it."""
        return dict(self._cancels)

    def stop(self) -> None:
        self.stopping.set()

    # -- this thread ---------------------------------------------------------------

    def run(self) -> None:
        next_beat = next_renewal = 0.0
        while not self.stopping.wait(self.poll_s):
            now = time.monotonic()
            for step, due in (
                (self.check_cancels, True),
                (self.beat, now >= next_beat),
                (self.renew_leases, now >= next_renewal),
            ):
                if not due:
                    continue
                try:
                    step()
                except Exception as exc:
                    log.warning("supervisor %s failed: %s", step.__name__.replace("_", " "), exc)
            if now >= next_beat:
                next_beat = now + self.heartbeat_s
            if now >= next_renewal:
                next_renewal = now + self.lease_s / 3

    def _live(self) -> list[LiveChild]:
        with self._lock:
            return list(self._children.values())

    def check_cancels(self) -> None:
        """One query for all children: which of the jobs they run now were cancelled."""
        running: set[str] = set()
        for child in self._live():
            running.update(attempt.job_id for attempt in read_attempts(child.held_path) or ())
        found = self.store.cancel_requested_among(running) if running else []
        now = time.monotonic()
        self._cancels = {job_id: self._cancels.get(job_id, now) for job_id in found}

    def beat(self) -> None:
        """Each live child's heartbeat, as its own thread writes it."""
        with self._lock:
            owners = list(self._children)
            if not owners:
                return
            # NOTE: XX: only a child that beat itself once (at its start) is beaten here, and a
            # child recovered meanwhile (its member removed) never comes back.
            self.client.zadd(HEARTBEATS, {owner: int(time.time() * 1000) for owner in owners}, xx=True)

    def renew_leases(self) -> None:
        """The leases of the jobs each live child holds (running or claimed ahead)."""
        for child in self._live():
            with self._lock:
                if child.owner not in self._children:
                    continue
                held = read_held(child.held_path)
                if held is not None and (held.running or held.ahead):
                    self.store.renew_leases(child.owner, held.running | held.ahead, lease_s=self.lease_s)
