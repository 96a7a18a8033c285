"""A worker process's pulse: its Redis heartbeat, its job leases, its consumers, a liveness and a readiness file."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import redis

from services.worker.consumer_watch import ConsumerWatch
from services.worker.middleware.claims import Claims
from shared.broker.orphans import beat
from shared.store.protocol import JobStoreProtocol

log = logging.getLogger(__name__)


class FlowUpkeep(Protocol):
    """The flow limits' share of a beat (``middleware/flow.py``): renew slots, wake waiters of expired ones."""

    def beat(self) -> None: ...


class Heartbeat(threading.Thread):
    """Beats every ``interval_s`` from its own thread, so a long task never looks like a dead worker."""

    def __init__(
        self,
        *,
        client: redis.Redis,
        store: JobStoreProtocol,
        claims: Claims,
        flow: FlowUpkeep | None = None,
        owner: str,
        interval_s: float,
        lease_s: float,
        liveness_file: Path | None = None,
        consumers: ConsumerWatch | None = None,
        down_file: Path | None = None,
    ) -> None:
        super().__init__(name="jobrelay-heartbeat", daemon=True)
        self.client = client
        self.store = store
        self.claims = claims
        self.flow = flow
        self.owner = owner
        self.interval_s = interval_s
        self.lease_s = lease_s
        self.liveness_file = liveness_file
        #: Dead consumer threads are started again each beat.
        self.consumers = consumers
        #: Present (and fresh) while a consumer of this process is down: the readiness probe's "no".
        self.down_file = down_file
        self.stopping = threading.Event()

    def beat_once(self) -> None:
        try:
            beat(self.client, self.owner)
        except redis.RedisError as exc:
            log.warning("heartbeat to Redis failed: %s", exc)
        running = self.claims.running_job_ids()
        if running:
            try:
                self.store.renew_leases(self.owner, running, lease_s=self.lease_s)
            except Exception as exc:
                log.warning("lease renewal failed: %s", exc)
        if self.flow is not None:
            try:
                self.flow.beat()
            except Exception as exc:
                log.warning("concurrency slot upkeep failed: %s", exc)
        if self.consumers is not None:
            self._watch_consumers(self.consumers)
        if self.liveness_file is not None:
            _write_file(self.liveness_file.touch, "liveness file")

    def _watch_consumers(self, consumers: ConsumerWatch) -> None:
        try:
            consumers.revive()
        except Exception:
            log.exception("could not start a consumer again")
        down = consumers.down()
        down_file = self.down_file
        if down_file is None:
            return
        if down:
            _write_file(lambda: down_file.write_text(",".join(down) + "\n"), "readiness file")
        else:
            _write_file(lambda: down_file.unlink(missing_ok=True), "readiness file")

    def run(self) -> None:
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                self.beat_once()
            except Exception:
                # NOTE: this thread renews the leases of every running job; ended, they would pass
                # to other workers while this process still runs them.
                log.exception("heartbeat failed; beating again in %.1fs", self.interval_s)
            self.stopping.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def stop(self) -> None:
        self.stopping.set()


def _write_file(write: Callable[[], object], what: str) -> None:
    """A probe file written, or the reason logged: a full disk must not end the heartbeat thread."""
    try:
        write()
    except OSError as exc:
        log.warning("could not write the worker's %s: %s", what, exc)
