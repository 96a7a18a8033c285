"""A worker process's pulse: its Redis heartbeat, its job leases, its consumers, a liveness and a readiness file."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import redis

from services.worker.consumer_watch import ConsumerWatch
from services.worker.middleware.claims import Claims
from shared.broker.orphans import beat
from shared.store.protocol import JobStoreProtocol

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    """Beats every ``interval_s`` from its own thread, so a long task never looks like a dead worker."""

    def __init__(
        self,
        *,
        client: redis.Redis,
        store: JobStoreProtocol,
        claims: Claims,
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
        if self.consumers is not None:
            self._watch_consumers(self.consumers)
        if self.liveness_file is not None:
            self.liveness_file.touch()

    def _watch_consumers(self, consumers: ConsumerWatch) -> None:
        try:
            consumers.revive()
        except Exception:
            log.exception("could not start a consumer again")
        down = consumers.down()
        if self.down_file is None:
            return
        if down:
            self.down_file.write_text(",".join(down) + "\n")
        else:
            self.down_file.unlink(missing_ok=True)

    def run(self) -> None:
        while not self.stopping.is_set():
            started = time.monotonic()
            self.beat_once()
            self.stopping.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def stop(self) -> None:
        self.stopping.set()
