"""The flow limits' twins for the test mode: concurrency slots and rate buckets in memory, on the virtual clock.

The worker's own ``Flow`` middleware enforces a task's ``concurrency`` and ``rate_limit`` in the
test stack as it does in a worker; only its two Redis-backed collaborators are swapped for these,
real small implementations of the same rules (``shared/flow/slots.py``, ``shared/flow/buckets.py``):

- ``MemorySlots``: at most ``limit`` holders per bucket; a refused job's copy waits in its bucket's
  list and goes back to the broker, due at once, when a slot is given back. The stack runs one job
  at a time, so a slot is taken only while its job runs; the waiting path is kept for parity.
- ``MemoryRateBuckets``: the same GCRA as the Redis script (one token per ``interval``, the next
  one reserved for a job that finds none, none reserved more than ``max_reserve_s`` ahead), timed
  by the virtual clock, so a job deferred by its rate runs after ``advance()`` passes its token.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from shared.flow.buckets import MAX_RESERVE_S, Token
from shared.flow.limits import Rate
from shared.flow.slots import Bucket, Waiting, holder_name


class MemorySlots:
    """``ConcurrencySlots`` in memory; ``send_back`` enqueues a waiting copy's encoded message again."""

    def __init__(self, send_back: Callable[[bytes], object]) -> None:
        self.send_back = send_back
        self._holders: dict[str, set[str]] = {}
        self._waiting: dict[str, list[Waiting]] = {}
        self._lock = threading.Lock()

    def acquire(self, bucket: Bucket, *, owner: str, redis_message_id: str, waiting: Waiting | None = None) -> int:
        """1: a slot taken; 0: ``waiting`` now waits for one; -1: none free (and not asked to wait)."""
        with self._lock:
            holders = self._holders.setdefault(bucket.name, set())
            if len(holders) < bucket.limit:
                holders.add(holder_name(owner, redis_message_id))
                return 1
            if waiting is None:
                return -1
            self._waiting.setdefault(bucket.name, []).append(waiting)
            return 0

    def release(self, bucket: Bucket, *, holder: str = "", owner: str = "") -> int:
        """Give ``holder``'s slot back; as many waiters as there are free slots go back to the broker."""
        with self._lock:
            holders = self._holders.setdefault(bucket.name, set())
            holders.discard(holder)
            waiting = self._waiting.get(bucket.name, [])
            moved = waiting[: max(0, bucket.limit - len(holders))]
            del waiting[: len(moved)]
        for copy in moved:
            self.send_back(copy.body)
        return len(moved)

    def renew(self, held: Iterable[tuple[Bucket, str]]) -> None:
        """Nothing expires here: the test's process is the only worker, and it does not die."""

    def pump(self) -> int:
        return 0

    def release_owner(self, owner: str) -> int:
        with self._lock:
            gone = 0
            for holders in self._holders.values():
                mine = {holder for holder in holders if holder.startswith(f"{owner}|")}
                holders -= mine
                gone += len(mine)
            return gone

    def holders(self, bucket: str) -> list[str]:
        with self._lock:
            return sorted(self._holders.get(bucket, ()))

    def waiting(self, bucket: str) -> int:
        with self._lock:
            return len(self._waiting.get(bucket, ()))


class MemoryRateBuckets:
    """``RateBuckets`` in memory: each bucket's next free token time, on ``now_ms`` (the virtual clock)."""

    def __init__(self, now_ms: Callable[[], int], *, max_reserve_s: float = MAX_RESERVE_S) -> None:
        self.now_ms = now_ms
        self.max_reserve_ms = int(max_reserve_s * 1000)
        self._next_free_ms: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, bucket: str, rate: Rate) -> Token:
        """As the Redis script: the token now, one reserved ``wait_ms`` ahead, or none within reach."""
        interval_ms = max(1, round(rate.interval_s * 1000))
        with self._lock:
            now = self.now_ms()
            start = max(self._next_free_ms.get(bucket, 0), now)
            wait = start - now
            if wait > self.max_reserve_ms:
                return Token(False, wait, now)
            self._next_free_ms[bucket] = start + interval_ms
            return Token(True, wait, now)
