"""A worker process's idle concurrency slots, kept a moment for its next job of the same bucket.

Taking and giving back a slot in Redis is a script call each (``shared/flow/slots.py``),
two round trips per job on its worker thread: half a no-op job's cost. While
nobody waits for a bucket, a slot whose job ended here stays held in Redis
and the next job of that bucket on this process takes it without a round
trip. It is given back (waking the waiters) as soon as this process learns
that jobs wait for the bucket: at once when it made one wait itself, else
within ``check_s`` (its thread looks at the waiting lists of the buckets it
keeps slots of), and in any case once idle for ``linger_s``. Kept slots are
held slots: counted against the limit, renewed by the heartbeat, given back
by the crash recovery with the rest of the process's.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from shared.flow.slots import Bucket, ConcurrencySlots, waiting_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeldSlot:
    """A slot this process holds in Redis: for a running job, or kept idle here."""

    bucket: Bucket
    holder: str


class SlotPool(threading.Thread):
    def __init__(
        self, slots: ConcurrencySlots, *, owner: str, keep: int, check_s: float = 0.02, linger_s: float = 0.5
    ) -> None:
        super().__init__(name="jobrelay-slot-pool", daemon=True)
        self.slots = slots
        self.owner = owner
        #: Most idle slots kept per bucket (the process's threads: more could never be used at once).
        self.keep = keep
        self.check_s = check_s
        self.linger_s = linger_s
        self._idle: dict[str, list[tuple[HeldSlot, float]]] = {}
        #: Buckets seen with jobs waiting: their slots go back to Redis, none is kept.
        self._waited: set[str] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._wake = threading.Event()

    # -- the worker threads' -------------------------------------------------------

    def take(self, bucket: Bucket) -> HeldSlot | None:
        """A kept slot of ``bucket``, unless jobs wait for one (then they come first)."""
        with self._lock:
            idle = self._idle.get(bucket.name)
            if not idle or bucket.name in self._waited:
                return None
            return idle.pop()[0]

    def put(self, held: HeldSlot) -> bool:
        """Keep the slot of a job that ended; False when it must go back to Redis now."""
        name = held.bucket.name
        with self._lock:
            # NOTE: without its thread nothing would give a kept slot back to waiters (a worker built
            # for a test, never started): then nothing is kept.
            if name in self._waited or self._stopping.is_set() or not self.is_alive():
                return False
            idle = self._idle.setdefault(name, [])
            if len(idle) >= self.keep:
                return False
            idle.append((held, time.monotonic()))
            return True

    def waited(self, bucket: Bucket) -> None:
        """A job of ``bucket`` was made to wait here: the kept slots go back at once."""
        with self._lock:
            self._waited.add(bucket.name)
        self._wake.set()

    def held(self) -> list[HeldSlot]:
        """The kept slots (renewed each heartbeat like the running jobs' ones)."""
        with self._lock:
            return [held for idle in self._idle.values() for held, _ in idle]

    # -- its thread --------------------------------------------------------------------

    def run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.check_s)
            self._wake.clear()
            try:
                self.check()
            except Exception as exc:
                log.warning("could not check the kept concurrency slots: %s", exc)
                self._stopping.wait(1.0)

    def check(self) -> None:
        """Give back the kept slots of buckets with waiters, and those idle past ``linger_s``."""
        with self._lock:
            names = sorted({name for name, idle in self._idle.items() if idle} | self._waited)
        if not names:
            return
        pipe = self.slots.client.pipeline(transaction=False)
        for name in names:
            pipe.llen(waiting_key(name))
        lengths = dict(zip(names, pipe.execute(), strict=True))
        now = time.monotonic()
        going: list[HeldSlot] = []
        with self._lock:
            for name in names:
                idle = self._idle.get(name, [])
                if lengths[name] or name in self._waited:
                    going.extend(held for held, _ in idle)
                    idle.clear()
                else:
                    going.extend(held for held, since in idle if now - since > self.linger_s)
                    idle[:] = [(held, since) for held, since in idle if now - since <= self.linger_s]
                if lengths[name]:
                    self._waited.add(name)
                else:
                    self._waited.discard(name)
                if not idle:
                    self._idle.pop(name, None)
        self._give_back(going)

    def stop(self) -> None:
        """Give every kept slot back (the worker stops)."""
        self._stopping.set()
        self._wake.set()
        with self._lock:
            going = [held for idle in self._idle.values() for held, _ in idle]
            self._idle.clear()
        self._give_back(going)

    def _give_back(self, going: list[HeldSlot]) -> None:
        for held in going:
            self.slots.release(held.bucket, holder=held.holder, owner=self.owner)
