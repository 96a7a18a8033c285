"""The worker's side of the Redis broker: fetch, hand out, ack, put back.

A message goes from Redis to a worker thread through here. Before handing out
the messages it fetched, the consumer asks its ``ClaimsAhead`` (the claims
middleware's reservations) how many may go now; when a thread is done, the
ack of a succeeded job goes to its ``DeferredAcks`` (the acker, which acks once
the job's final status is committed) and any other ack goes straight to Redis.
Both collaborators come through ``WorkerBroker``'s constructor.

An idle consumer waits in ``BLPOP`` on the queue's wake-up list
(``shared/broker/waking.py``) instead of sleeping. A queue's fetch takes its
highest priority band first and returns nothing while the queue is paused
(``shared/broker/bands.py``); a consumer of a paused queue puts back what it
fetched and has not handed out, and waits for the resume's token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import compute_backoff
from dramatiq.errors import ConnectionClosed, DecodeError
from dramatiq.message import Message

from services.worker.ack_sets import AckSets
from shared.broker.bands import BandedFetch, paused_key, resume_key
from shared.broker.waking import WakingRedisBroker, is_delay_queue, wake_key

log = logging.getLogger(__name__)

#: Longest an idle consumer blocks before it looks again (and lets a stopping worker go).
WAIT_S = 1.0
#: Longest a consumer holding claimable messages waits for room before it looks again (acks go out meanwhile).
ROOM_WAIT_S = 0.01
#: How often a consumer holding fetched messages it has not handed out looks whether its queue was paused.
PAUSE_CHECK_S = 0.5


@contextmanager
def connection_lost() -> Iterator[None]:
    """Redis away (refused, reset, or a socket past its timeout) raises Dramatiq's ``ConnectionClosed``.

    NOTE: Dramatiq's consumer thread reconnects on ``ConnectionClosed`` and keeps the messages its
    worker threads hold; any other error makes it close its consumer, and an error there ends the
    thread for good (no more fetches or delayed messages of its queue in this process). Dramatiq
    maps ``redis.ConnectionError`` only; ``redis.TimeoutError`` is not one (Bogdanp/dramatiq#894).
    """
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise ConnectionClosed(exc) from None


class ClaimsAhead(Protocol):
    """What a consumer asks before handing out fetched messages (``services/worker/reservations.py``)."""

    def ready(self, candidates: Sequence[Message[Any] | None]) -> int:
        """How many leading messages may go out now (``None``: one that needs no claim)."""

    def wait(self, timeout_s: float) -> None:
        """Until more may go out, or ``timeout_s``."""

    def give_back(self, redis_message_ids: Sequence[str]) -> None:
        """Undo the claims of messages going back to their queue; raises if it cannot."""


class DeferredAcks(Protocol):
    """Who acks a message once its job's final status is committed (``services/worker/acker.py``)."""

    def take(self, redis_message_id: str) -> Callable[[str, str], None] | None:
        """The ack that replaces the consumer's own for this message copy, if one was deferred (once)."""


class WorkerBroker(WakingRedisBroker):
    """The broker of a worker process: its consumers claim ahead, hand acks over and wake on tokens."""

    def __init__(
        self,
        *,
        ack_sets: AckSets,
        claims: ClaimsAhead | None = None,
        deferred_acks: DeferredAcks | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.broker_id = ack_sets.owner
        self.ack_sets = ack_sets
        self.claims = claims
        self.deferred_acks = deferred_acks
        self._fetches: dict[str, BandedFetch] = {}

    def fetch_banded(self, queue_name: str, count: int) -> list[bytes | None] | None:
        """Up to ``count`` messages of a (non-delay) queue, highest priority first; None while it is paused."""
        fetch = self._fetches.get(queue_name)
        if fetch is None:
            fetch = self._fetches[queue_name] = BandedFetch(
                self.client,
                namespace=self.namespace,
                acks=self.ack_sets.key(queue_name),
                queue_name=queue_name,
            )
        return fetch(min(count, self._max_unpack_size()))

    def do_fetch(self, queue_name: str, prefetch: int) -> list[bytes | None]:
        if is_delay_queue(queue_name):
            return super().do_fetch(queue_name, prefetch)
        return self.fetch_banded(queue_name, prefetch) or []

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> _WakingConsumer:
        return _WakingConsumer(
            self,
            queue_name,
            prefetch,
            timeout,
            ack_sets=self.ack_sets,
            claims=None if is_delay_queue(queue_name) else self.claims,
            deferred_acks=self.deferred_acks,
        )


class _WakingConsumer(_RedisConsumer):
    """Dramatiq's consumer, but an idle one waits in BLPOP instead of sleeping.

    NOTE: the fetch path mirrors ``dramatiq.brokers.redis._RedisConsumer.__next__`` (2.x).
    """

    broker: WorkerBroker

    def __init__(
        self,
        broker: RedisBroker,
        queue_name: str,
        prefetch: int,
        timeout: int,
        *,
        ack_sets: AckSets,
        claims: ClaimsAhead | None,
        deferred_acks: DeferredAcks | None,
    ) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)
        self.ack_sets = ack_sets
        self.claims = claims
        self.deferred_acks = deferred_acks
        # NOTE: after an error Dramatiq's consumer thread starts a new consumer and the old one's
        # messages in memory are dropped: the delayed messages its thread held (it resets its
        # delay queue), the prefetched messages not handed out yet, and the messages of a fetch
        # whose reply a dying connection lost (the script moved them into the ack set). Their
        # ids stay in this live worker's ack set, where nothing recovers them until the process
        # dies. A new consumer puts them back first: for a delay queue all of its ack set, for
        # another every id not in hand (empty on a process's first start).
        self._reclaim = True
        #: Leading cached messages that may be handed out (claimed ahead, or needing no claim).
        self._ready = 0
        self._pause_checked_at = time.monotonic()

    def ack(self, message: MessageProxy) -> None:
        """Ack now, or hand the ack to the deferred acks when they hold one for this copy (after a commit)."""
        redis_message_id = message.options["redis_message_id"]
        deferred = self.deferred_acks.take(redis_message_id) if self.deferred_acks is not None else None
        if deferred is None:
            with connection_lost():
                super().ack(message)
            self.ack_sets.handed_back(self.queue_name, [redis_message_id])
            return
        # The message leaves this consumer's prefetch count now; its ack set entry stays in
        # Redis until the deferred ack is done, so a crash before then still recovers it.
        self.queued_message_ids.discard(message.message_id)
        deferred(self.queue_name, redis_message_id)

    def nack(self, message: MessageProxy) -> None:
        """Dead-letter now (filed under the job id: ``shared/broker/dead_letters.py``), or hand it to the deferred
        acks when they hold one for this copy (after a commit)."""
        redis_message_id = message.options["redis_message_id"]
        deferred = self.deferred_acks.take(redis_message_id) if self.deferred_acks is not None else None
        if deferred is None:
            try:
                with connection_lost():
                    self.broker.do_nack(self.queue_name, redis_message_id, message.message_id)
            finally:
                self.queued_message_ids.discard(message.message_id)
            self.ack_sets.handed_back(self.queue_name, [redis_message_id])
            return
        self.queued_message_ids.discard(message.message_id)
        deferred(self.queue_name, redis_message_id)

    def __next__(self) -> MessageProxy | None:
        try:
            if self._reclaim:
                self._requeue_own_unacked()
                self._reclaim = False
            while True:
                if self.message_cache and self._paused_meanwhile():
                    self._put_back_cache()
                    continue
                if self.message_cache:
                    claims = self.claims
                    if claims is not None and self._ready == 0:
                        self._ready = claims.ready(self._candidates())
                        if self._ready == 0:
                            claims.wait(ROOM_WAIT_S)
                            return None
                    data = self.message_cache.pop(0)
                    self._ready = max(0, self._ready - 1)
                    if data is None:
                        continue
                    self.misses = 0
                    if isinstance(data, Message):
                        message = data
                    else:
                        try:
                            message = Message.decode(data)
                        except DecodeError:
                            self._dead_letter_undecodable(data)
                            continue
                    self.queued_message_ids.add(message.message_id)
                    self.ack_sets.hand_out(self.queue_name, message.options["redis_message_id"])
                    return MessageProxy(message)
                messages: list[Any] | None = []
                if self.outstanding_message_count < self.prefetch:
                    wanted = self.prefetch - self.outstanding_message_count
                    if is_delay_queue(self.queue_name):
                        messages = self.broker.do_fetch(self.queue_name, wanted)
                    else:
                        messages = self.broker.fetch_banded(self.queue_name, wanted)
                    if messages is None:
                        # Paused: wait for the resume's token (or the timeout), then look again.
                        self.broker.client.blpop([resume_key(self.queue_name)], timeout=WAIT_S)
                        return None
                    self.message_cache = messages
                    self._pause_checked_at = time.monotonic()
                if messages:
                    continue
                if not is_delay_queue(self.queue_name) and self.outstanding_message_count < self.prefetch:
                    # Idle: wait for a wake-up token (or the timeout), then fetch again.
                    self.broker.client.blpop([wake_key(self.queue_name)], timeout=WAIT_S)
                    return None
                self.misses, backoff_ms = compute_backoff(self.misses, max_backoff=self.timeout)
                time.sleep(backoff_ms / 1000)
                return None
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise ConnectionClosed(exc) from None

    def _paused_meanwhile(self) -> bool:
        """Whether the queue was paused since the last look (at most one look per ``PAUSE_CHECK_S``)."""
        now = time.monotonic()
        if is_delay_queue(self.queue_name) or now - self._pause_checked_at < PAUSE_CHECK_S:
            return False
        self._pause_checked_at = now
        return bool(self.broker.client.exists(paused_key(self.queue_name)))

    def _put_back_cache(self) -> None:
        """The queue was paused: what was fetched and not handed out goes back (claims first)."""
        redis_ids: list[str] = []
        for data in self.message_cache:
            if data is None:
                continue
            try:
                message = data if isinstance(data, Message) else Message.decode(data)
            except DecodeError:
                continue  # stays in the ack set: the next consumer, or the supervisor, puts it back
            redis_ids.append(message.options["redis_message_id"])
        if self._give_back(redis_ids):
            self.broker.do_requeue(self.queue_name, *redis_ids)
            self.message_cache = []
            self._ready = 0
            log.info("queue %s paused: put back %d fetched message(s)", self.queue_name, len(redis_ids))

    def _candidates(self) -> list[Message[Any] | None]:
        """The cached messages, decoded in place: each one a worker thread will run, else None."""
        candidates: list[Message[Any] | None] = []
        for index, data in enumerate(self.message_cache):
            message = data
            if not isinstance(data, Message):
                try:
                    message = self.message_cache[index] = Message.decode(data)
                except DecodeError:
                    candidates.append(None)  # dead-lettered when its turn comes
                    continue
            due = "eta" not in message.options and message.actor_name in self.broker.actors
            candidates.append(message if due else None)
        return candidates

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        """Dramatiq's requeue, once the claims made for the messages are given back.

        If they cannot be, the messages stay in this worker's ack set for recovery.
        """
        messages = list(messages)
        redis_message_ids = [message.options["redis_message_id"] for message in messages]
        if self._give_back(redis_message_ids):
            with connection_lost():
                super().requeue(messages)
            self.ack_sets.handed_back(self.queue_name, redis_message_ids)

    def close(self) -> None:
        """Give back the claims of messages still in the prefetch (they stay in the ack set: the
        consumer that replaces this one puts them back, or the supervisor once the process is gone)."""
        self._give_back([m.options["redis_message_id"] for m in self.message_cache if isinstance(m, Message)])
        super().close()

    def _give_back(self, redis_message_ids: list[str]) -> bool:
        """``ClaimsAhead.give_back`` for these messages; False (logged) when the store refused."""
        claims = self.claims
        if claims is None or not redis_message_ids:
            return True
        try:
            claims.give_back(redis_message_ids)
        except Exception:
            log.exception("could not give back the claims of %d message(s)", len(redis_message_ids))
            return False
        return True

    def _dead_letter_undecodable(self, data: bytes) -> None:
        """Move a payload that does not decode to the dead-letter queue instead of raising.

        NOTE: raising here (as Dramatiq does, Bogdanp/dramatiq#375) restarts the consumer and
        strands every message prefetched with the payload in this live worker's ack set, where
        nothing recovers them until the process dies. The payload's Redis id is not inside it:
        it is one of this consumer's unacked ids (at most its prefetch).
        """
        client = self.broker.client
        acks = self.ack_sets.key(self.queue_name)
        stored = f"{self.broker.namespace}:{self.queue_name}.msgs"
        redis_ids = list(client.smembers(acks))
        for redis_id, value in zip(redis_ids, client.hmget(stored, redis_ids) if redis_ids else [], strict=True):
            if value == data:
                self.broker.do_nack(self.queue_name, redis_id.decode())
                log.error("message %s of queue %s does not decode; dead-lettered", redis_id.decode(), self.queue_name)
                return
        log.error("a message on queue %s does not decode and was not found to dead-letter", self.queue_name)

    def _requeue_own_unacked(self) -> None:
        """Put back this process's unacked messages of the queue that no worker thread holds.

        NOTE: the ack set is read before the ids in hand: an id acked in between has left
        both, and the requeue script skips ids no longer in the ack set, so a message being
        acked is never put back.
        """
        acks = self.ack_sets.key(self.queue_name)
        members: set[str] = {member.decode() for member in self.broker.client.smembers(acks)}  # type: ignore[union-attr]
        if not is_delay_queue(self.queue_name):
            members -= self.ack_sets.in_hand(self.queue_name)
        redis_ids = sorted(members)
        if not redis_ids:
            return
        claims = self.claims
        if claims is not None:
            # Claims made ahead for the dropped prefetch go back before the messages do.
            claims.give_back(redis_ids)
        for start in range(0, len(redis_ids), 1000):
            self.broker.do_requeue(self.queue_name, *redis_ids[start : start + 1000])
        log.warning("put back %d message(s) of queue %s dropped by a reconnect", len(redis_ids), self.queue_name)
