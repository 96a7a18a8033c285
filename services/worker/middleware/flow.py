"""Flow: a job of a task with a concurrency or rate limit starts only within it; otherwise it waits, uncharged.

The first of the worker's middleware, before ``Claims``: a job over its limit
never reaches its claim, so it is not charged an attempt and not dead-lettered,
and its worker thread is free again at once.

- **Concurrency** (``shared/flow/slots.py``): the job takes a slot of its bucket.
  With none free, its claim made ahead (if any) is given back first, then one
  script takes a slot after all or puts a copy of the message (its own Redis id)
  on the bucket's waiting list; the delivery refused is acked as skipped. When
  a slot is given back (the job ended, here in the last ``after_*`` hook),
  waiters go to the front of their queue with a wake-up.
- **Rate** (``shared/flow/buckets.py``): the job takes its bucket's token, or
  has the next one reserved for it; then it is deferred: its row says
  ``scheduled`` with ``deferred: {"reason": "rate_limit", "until": ...}``, a copy
  of its message carrying the reservation (``RATE_TICKET``) goes to the delay
  queue and starts at that time without taking another token.

Concurrency is checked first: a job that waits for a slot keeps its reserved
token, and a job deferred for its rate gives its slot back. Every deferral is
counted in ``jobrelay_jobs_deferred_total{task,queue,reason}``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, cast

import dramatiq
import redis
from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import Middleware, SkipMessage

from services.worker.outages import deliver, persist
from services.worker.slot_pool import HeldSlot, SlotPool
from shared import metrics
from shared.broker.bands import new_redis_id
from shared.catalog import Catalog, TaskSpec
from shared.flow.buckets import RATE_TICKET, RateBuckets, Token
from shared.flow.limits import FlowLimits, Rate
from shared.flow.slots import Bucket, ConcurrencySlots, Waiting, holder_name
from shared.store.protocol import JobStoreProtocol

log = logging.getLogger(__name__)
#: Most idle slots a process keeps per bucket (``slot_pool.py``): above any thread count it runs with.
KEEP_PER_BUCKET = 64


class GivesBack(Protocol):
    """The claims made ahead (``services/worker/reservations.py``): undone for a job that will not start now."""

    def give_back(self, redis_message_ids: Sequence[str]) -> None: ...


class Slots(Protocol):
    """A concurrency limit's slots (``ConcurrencySlots`` in Redis; the test mode's twin in memory)."""

    def acquire(self, bucket: Bucket, *, owner: str, redis_message_id: str, waiting: Waiting | None = None) -> int: ...

    def release(self, bucket: Bucket, *, holder: str = "", owner: str = "") -> int: ...

    def renew(self, held: Iterable[tuple[Bucket, str]]) -> None: ...

    def pump(self) -> int: ...


class Buckets(Protocol):
    """A rate limit's tokens (``RateBuckets`` in Redis; the test mode's twin on its virtual clock)."""

    max_reserve_ms: int

    def take(self, bucket: str, rate: Rate) -> Token: ...


class Flow(Middleware):
    """Listed first: before the claim, and its after hooks (which give the slot back) run last.

    Its slots and buckets live in Redis through ``client``, unless ``slots`` and ``buckets`` are given.
    """

    def __init__(
        self,
        catalog: Catalog,
        *,
        client: redis.Redis | None,
        store: JobStoreProtocol,
        claims_ahead: GivesBack,
        owner: str,
        namespace: str,
        slot_ttl_s: float,
        slots: Slots | None = None,
        buckets: Buckets | None = None,
    ) -> None:
        self.limits: dict[str, FlowLimits] = {}
        for spec in catalog.specs():
            limits = spec.limits()
            if limits.any:
                self.limits[spec.name] = limits
        if (slots is None or buckets is None) and client is None:
            raise ValueError("Flow needs a Redis client, or both its slots and its buckets")
        self.slots: Slots = slots or ConcurrencySlots(cast(redis.Redis, client), namespace=namespace, ttl_s=slot_ttl_s)
        self.buckets: Buckets = buckets or RateBuckets(cast(redis.Redis, client))
        #: Slots of jobs that ended here, kept for the next job of their bucket while none waits.
        # NOTE: the pool's thread reads the waiting lists in Redis: with slots given it is never started,
        # and a pool never started keeps no slot (``put`` says so), so it only passes them through.
        self.pool = SlotPool(cast(ConcurrencySlots, self.slots), owner=owner, keep=KEEP_PER_BUCKET)
        self.store = store
        self.claims_ahead = claims_ahead
        self.owner = owner
        self.namespace = namespace
        #: The slots this process holds, by Redis message id (renewed each heartbeat).
        self._held: dict[str, HeldSlot] = {}
        self._lock = threading.Lock()

    def series(self, specs: Iterable[TaskSpec]) -> list[tuple[str, str, str]]:
        """The (task, queue, reason) of every deferral these tasks can have: their counters start at 0."""
        found = []
        for spec in specs:
            limits = self.limits.get(spec.name)
            if limits is not None and limits.concurrency is not None:
                found.append((spec.name, spec.queue, "concurrency"))
            if limits is not None and limits.rate is not None:
                found.append((spec.name, spec.queue, "rate_limit"))
        return found

    def start(self) -> None:
        """Start keeping the slots of ended jobs for the next ones (once the worker runs)."""
        limited = any(limits.concurrency is not None for limits in self.limits.values())
        if limited and isinstance(self.slots, ConcurrencySlots):
            self.pool.start()

    def close(self) -> None:
        """Give back the kept slots (after the worker stopped)."""
        if self.pool.is_alive():
            self.pool.stop()

    # -- the heartbeat's --------------------------------------------------------

    def beat(self) -> None:
        """Renew this process's slots; send waiters of buckets whose slots expired to their queue."""
        if not self.limits:
            return
        with self._lock:
            held = [*self._held.values(), *self.pool.held()]
        self.slots.renew((slot.bucket, slot.holder) for slot in held)
        self.slots.pump()

    # -- Dramatiq hooks -----------------------------------------------------------

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        limits = self.limits.get(message.actor_name)
        if limits is None:
            return
        redis_message_id: str = message.options["redis_message_id"]
        held: HeldSlot | None = None
        if limits.concurrency is not None:
            bucket = Bucket(limits.concurrency_bucket(message.kwargs), message.queue_name, limits.concurrency)
            held = self._take_slot(message, bucket, redis_message_id)
        if limits.rate is not None and RATE_TICKET not in message.options:
            rate, name = limits.rate, limits.rate_bucket(message.kwargs)
            token = deliver(lambda: self.buckets.take(name, rate))
            if not token.now:
                if held is not None:
                    self._release(held)
                self._defer_for_rate(broker, message, token)
                raise SkipMessage()
        if held is not None:
            with self._lock:
                self._held[redis_message_id] = held

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        self._release_of(message)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        self._release_of(message)

    # -- concurrency ------------------------------------------------------------

    def _take_slot(self, message: MessageProxy, bucket: Bucket, redis_message_id: str) -> HeldSlot:
        """A slot for this job, or (raising ``SkipMessage``) the job waits for one."""
        kept = self.pool.take(bucket)
        if kept is not None:
            return kept
        holder = holder_name(self.owner, redis_message_id)
        if deliver(lambda: self.slots.acquire(bucket, owner=self.owner, redis_message_id=redis_message_id)) == 1:
            return HeldSlot(bucket, holder)
        # NOTE: the claim made ahead goes back before the message can be seen waiting: a slot freed
        # at once could send it to another worker, whose claim must find the row claimable.
        self._give_back(redis_message_id)
        # The copy keeps the message's priority band (shared/broker/bands.py) when a slot sends it back.
        copy_id = new_redis_id(message.options.get("priority"))
        waiting = Waiting(copy_id, _copy(message, {**message.options, "redis_message_id": copy_id}).encode())
        got = deliver(
            lambda: self.slots.acquire(bucket, owner=self.owner, redis_message_id=redis_message_id, waiting=waiting)
        )
        if got == 1:
            return HeldSlot(bucket, holder)  # freed meanwhile: ``Claims`` claims the job itself
        self.pool.waited(bucket)
        self._note(message, {"reason": "concurrency", "until_ms": None}, scheduled=False)
        metrics.jobs_deferred_total.labels(message.actor_name, message.queue_name, "concurrency").inc()
        log.info("job %s waits for a concurrency slot of %s", message.message_id, bucket.name)
        raise SkipMessage()

    def _release_of(self, message: MessageProxy) -> None:
        with self._lock:
            held = self._held.pop(message.options.get("redis_message_id", ""), None)
        if held is not None and not self.pool.put(held):
            self._release(held)

    def _release(self, held: HeldSlot) -> None:
        deliver(lambda: self.slots.release(held.bucket, holder=held.holder, owner=self.owner))

    # -- rate ---------------------------------------------------------------------

    def _defer_for_rate(self, broker: Broker, message: MessageProxy, token: Token) -> None:
        """Send a copy of the message to the delay queue: with its token reserved, or to try again later."""
        self._give_back(message.options["redis_message_id"])
        delay_ms = token.wait_ms if token.reserved else self.buckets.max_reserve_ms
        options = {k: v for k, v in message.options.items() if k not in ("eta", "redis_message_id", RATE_TICKET)}
        if token.reserved:
            options[RATE_TICKET] = delay_ms
        later = _copy(message, options)
        # NOTE: on the buckets' clock (Redis's TIME, the one clock of the rate; the test mode's virtual one).
        until_ms = token.now_ms + delay_ms
        self._note(message, {"reason": "rate_limit", "until_ms": until_ms}, scheduled=True)
        # The current message is acked after the skip hooks: its copy is in Redis first.
        deliver(lambda: broker.enqueue(later, delay=delay_ms))
        metrics.jobs_deferred_total.labels(message.actor_name, message.queue_name, "rate_limit").inc()
        log.info("job %s deferred %.3fs by its rate limit", message.message_id, delay_ms / 1000)

    # -- the row ------------------------------------------------------------------

    def _give_back(self, redis_message_id: str) -> None:
        """Undo this message's claim made ahead, if any (waiting out a store outage: it must not run twice)."""
        persist(lambda: self.claims_ahead.give_back([redis_message_id]))

    def _note(self, message: MessageProxy, deferred: dict[str, Any], *, scheduled: bool) -> None:
        """Show the deferral in the job's row; only for readers, so a store error is logged, not waited out."""
        try:
            self.store.defer(message.message_id, deferred, scheduled=scheduled)
        except Exception as exc:
            log.warning("could not record the deferral of job %s: %s", message.message_id, exc)


def _copy(message: MessageProxy, options: dict[str, Any]) -> dramatiq.Message[Any]:
    """The same job's message with other options (a copy that waits, or one deferred)."""
    return dramatiq.Message(
        queue_name=message.queue_name,
        actor_name=message.actor_name,
        args=message.args,
        kwargs=message.kwargs,
        options=options,
        message_id=message.message_id,
        message_timestamp=message.message_timestamp,
    )
