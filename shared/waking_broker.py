"""A Redis broker whose idle workers wake the moment a message arrives, without polling Redis hard.

Dramatiq's Redis consumer polls an empty queue with a backoff of up to its
worker timeout, which makes an idle worker late by up to that much (a
second by default). Here every enqueue also pushes a token on
``jobrelay:wake:<queue>`` (trimmed to a few), and an idle consumer waits in
``BLPOP`` on that list: it wakes at once when work arrives and costs one
command per ``WAIT_S`` while nothing does. Delay queues keep Dramatiq's
polling, since their messages become due by the clock, not by an enqueue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import compute_backoff, current_millis, dq_name
from dramatiq.errors import ConnectionClosed, DecodeError
from dramatiq.message import Message, get_encoder

from shared.ids import random_uuid

log = logging.getLogger(__name__)

WAKE_PREFIX = "jobrelay:wake:"
#: Tokens kept per queue: enough to wake every idle consumer of a burst, never a pile.
WAKE_TOKENS = 64
#: Longest an idle consumer blocks before it looks again (and lets a stopping worker go).
WAIT_S = 1.0
#: A middleware that sets this attribute on a ``MessageProxy`` to a callable takes over the
#: message's ack: the consumer calls it with the queue name and the Redis message id instead
#: of acking (the status middleware acks once the job's final status is committed).
DEFERRED_ACK = "jobrelay_deferred_ack"


def wake_key(queue_name: str) -> str:
    return WAKE_PREFIX + queue_name


def is_delay_queue(queue_name: str) -> bool:
    return queue_name.endswith(".DQ")


#: Dramatiq's "ack" (dispatch.lua) for many messages of one queue: out of the worker's ack set, then
#: out of the queue's message hash. KEYS: the ack set, the message hash; ARGV: redis message ids.
_ACK_MANY = """
local acked = 0
for _, message_id in ipairs(ARGV) do
    if redis.call("srem", KEYS[1], message_id) > 0 then
        redis.call("hdel", KEYS[2], message_id)
        acked = acked + 1
    end
end
return acked
"""


class ClaimsAhead(Protocol):
    """What a consumer asks before handing out fetched messages (``services/worker/reservations.py``)."""

    def ready(self, candidates: Sequence[Message[Any] | None]) -> int:
        """How many leading messages may go out now (``None``: one that needs no claim)."""

    def wait(self, timeout_s: float) -> None:
        """Until more may go out, or ``timeout_s``."""

    def give_back(self, redis_message_ids: Sequence[str]) -> None:
        """Undo the claims of messages going back to their queue; raises if it cannot."""


#: Longest a consumer holding claimable messages waits for room before it looks again (acks go out meanwhile).
ROOM_WAIT_S = 0.01


class WakingRedisBroker(RedisBroker):
    _ack_script: Any = None
    #: Whether Redis is known to hold Dramatiq's dispatch script (see ``_execute``).
    _dispatch_loaded = False
    #: Set by a worker that claims jobs before its consumers hand their messages out.
    claims_ahead: ClaimsAhead | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Per queue, the Redis message ids this process's consumers handed to its worker
        #: threads and has not acked, nacked or requeued yet: the only legitimate members
        #: of its ack set once a consumer is replaced (see ``_WakingConsumer``).
        self._in_hand: dict[str, set[str]] = {}
        self._in_hand_lock = threading.Lock()

    def hand_out(self, queue_name: str, redis_message_id: str) -> None:
        with self._in_hand_lock:
            self._in_hand.setdefault(queue_name, set()).add(redis_message_id)

    def handed_back(self, queue_name: str, redis_message_ids: Iterable[str]) -> None:
        with self._in_hand_lock:
            self._in_hand.get(queue_name, set()).difference_update(redis_message_ids)

    def in_hand(self, queue_name: str) -> set[str]:
        with self._in_hand_lock:
            return set(self._in_hand.get(queue_name, ()))

    def acks_key(self, queue_name: str) -> str:
        """This process's ack set of ``queue_name``: the messages fetched and not acked yet."""
        return f"{self.namespace}:__acks__.{self.broker_id}.{queue_name}"

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return _WakingConsumer

    def do_enqueue(self, queue_name: str, message_id: str, data: bytes) -> Any:
        """Dramatiq's enqueue script and the wake-up token, in one round trip."""

        def fill(pipe: redis.client.Pipeline) -> None:
            self._enqueue_in(pipe, queue_name, message_id, data)
            self._wake_in(pipe, {queue_name})

        return self._execute(fill)[0]

    def enqueue_many(self, messages: list[tuple[Message[Any], int | None]]) -> None:
        """``enqueue`` for many messages (with their delays in ms) in one round trip.

        Like ``RedisBroker.enqueue``, each copy gets its own ``redis_message_id``
        and a delayed one goes to the delay queue with its ``eta``.
        """
        sent: list[tuple[Message[Any], int | None]] = []
        # NOTE: what Dramatiq's dispatch script does per enqueue (an HSET of the message and an
        # RPUSH of its id), done per queue for all the messages at once: one command per queue
        # instead of one script call per message, in one MULTI/EXEC round trip.
        by_queue: dict[str, dict[str, bytes]] = {}
        encode = get_encoder().encode
        now_ms = current_millis()
        for message, delay in messages:
            # NOTE: ``Message.copy`` and ``Message.encode`` go through ``dataclasses`` per
            # message, which cost more than the rest of a batch's publish; this builds the
            # same copy and the same encoding directly.
            redis_message_id = random_uuid()
            options = {**message.options, "redis_message_id": redis_message_id}
            queue_name = message.queue_name
            if delay is not None:
                queue_name = dq_name(queue_name)
                options["eta"] = now_ms + delay
            fields: dict[str, Any] = {
                "queue_name": queue_name,
                "actor_name": message.actor_name,
                "args": message.args,
                "kwargs": message.kwargs,
                "options": options,
                "message_id": message.message_id,
                "message_timestamp": message.message_timestamp,
            }
            if self.middleware:
                message = Message(**fields)
                self.emit_before("enqueue", message, delay)
                sent.append((message, delay))
            by_queue.setdefault(queue_name, {})[redis_message_id] = encode(fields)
        pipe = self.client.pipeline(transaction=True)
        for queue_name, encoded in by_queue.items():
            pipe.hset(f"{self.namespace}:{queue_name}.msgs", mapping=encoded)  # type: ignore[arg-type]
            pipe.rpush(f"{self.namespace}:{queue_name}", *encoded)
        self._wake_in(pipe, set(by_queue))
        pipe.execute()
        for message, delay in sent:
            self.emit_after("enqueue", message, delay)

    def _execute(self, fill: Callable[[redis.client.Pipeline], None]) -> list[Any]:
        """Run a pipeline of dispatch script calls in one round trip.

        NOTE: redis-py sends ``SCRIPT EXISTS`` before every pipeline that calls a script,
        a second round trip per publish. Once the script is known to be loaded it is
        called by its digest directly; if Redis lost it (a restart), no enqueue of the
        pipeline ran, so it runs again the redis-py way, which loads the script (a
        repeated wake-up token is harmless).
        """
        for attempt in range(2):
            pipe = self.client.pipeline(transaction=False)
            fill(pipe)
            try:
                results: list[Any] = pipe.execute()
            except redis.exceptions.NoScriptError:
                if attempt:
                    raise
                self._dispatch_loaded = False
                continue
            self._dispatch_loaded = True
            return results
        raise AssertionError("unreachable")

    def _wake_in(self, pipe: redis.client.Pipeline, queues: set[str]) -> None:
        for queue_name in queues:
            if not is_delay_queue(queue_name):
                pipe.lpush(wake_key(queue_name), 1)
                pipe.ltrim(wake_key(queue_name), 0, WAKE_TOKENS - 1)

    def ack_many(self, acks: list[tuple[str, str]]) -> None:
        """Dramatiq's ack of many ``(queue name, redis message id)`` pairs, one script call per queue."""
        by_queue: dict[str, list[str]] = {}
        for queue_name, redis_message_id in acks:
            by_queue.setdefault(queue_name, []).append(redis_message_id)
        if self._ack_script is None:
            self._ack_script = self.client.register_script(_ACK_MANY)
        for queue_name, ids in by_queue.items():
            keys = [self.acks_key(queue_name), f"{self.namespace}:{queue_name}.msgs"]
            self._ack_script(keys=keys, args=ids)
            self.handed_back(queue_name, ids)

    def _enqueue_in(self, pipe: redis.client.Pipeline, queue_name: str, message_id: str, data: bytes) -> None:
        self._dispatch_in(pipe, "enqueue", queue_name, message_id, data)

    def _dispatch_in(self, pipe: redis.client.Pipeline, command: str, queue_name: str, *args: str | bytes) -> None:
        """Dramatiq's dispatch script (``RedisBroker._dispatch``), queued on ``pipe``."""
        script = self.scripts["dispatch"]
        argv = [
            command,
            current_millis(),
            queue_name,
            self.broker_id,
            self.heartbeat_timeout,
            self.dead_message_ttl,
            0,
            self._max_unpack_size(),
            *args,
        ]
        if self._dispatch_loaded:
            pipe.evalsha(script.sha, 1, self.namespace, *argv)
        else:
            script(keys=[self.namespace], args=argv, client=pipe)


class _WakingConsumer(_RedisConsumer):
    """Dramatiq's consumer, but an idle one waits in BLPOP instead of sleeping.

    NOTE: the fetch path mirrors ``dramatiq.brokers.redis._RedisConsumer.__next__`` (2.x).
    """

    broker: WakingRedisBroker

    def __init__(self, broker: RedisBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)
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

    def ack(self, message: MessageProxy) -> None:
        """Ack now, or hand the ack to whoever set ``DEFERRED_ACK`` on the message (after a commit)."""
        deferred: Callable[[str, str], None] | None = getattr(message, DEFERRED_ACK, None)
        if deferred is None:
            super().ack(message)
            self.broker.handed_back(self.queue_name, [message.options["redis_message_id"]])
            return
        # The message leaves this consumer's prefetch count now; its ack set entry stays in
        # Redis until the deferred ack is done, so a crash before then still recovers it.
        self.queued_message_ids.discard(message.message_id)
        deferred(self.queue_name, message.options["redis_message_id"])

    def nack(self, message: MessageProxy) -> None:
        super().nack(message)
        self.broker.handed_back(self.queue_name, [message.options["redis_message_id"]])

    def __next__(self) -> MessageProxy | None:
        try:
            if self._reclaim:
                self._requeue_own_unacked()
                self._reclaim = False
            while True:
                if self.message_cache:
                    claims = None if is_delay_queue(self.queue_name) else self.broker.claims_ahead
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
                    self.broker.hand_out(self.queue_name, message.options["redis_message_id"])
                    return MessageProxy(message)
                messages = []
                if self.outstanding_message_count < self.prefetch:
                    self.message_cache = messages = self.broker.do_fetch(
                        self.queue_name, self.prefetch - self.outstanding_message_count
                    )
                if messages:
                    continue
                if not is_delay_queue(self.queue_name) and self.outstanding_message_count < self.prefetch:
                    # Idle: wait for a wake-up token (or the timeout), then fetch again.
                    self.broker.client.blpop([wake_key(self.queue_name)], timeout=WAIT_S)
                    return None
                self.misses, backoff_ms = compute_backoff(self.misses, max_backoff=self.timeout)
                time.sleep(backoff_ms / 1000)
                return None
        except redis.ConnectionError as exc:
            raise ConnectionClosed(exc) from None

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
            super().requeue(messages)
            self.broker.handed_back(self.queue_name, redis_message_ids)

    def close(self) -> None:
        """Give back the claims of messages still in the prefetch (they stay in the ack set: the
        consumer that replaces this one puts them back, or the supervisor once the process is gone)."""
        self._give_back([m.options["redis_message_id"] for m in self.message_cache if isinstance(m, Message)])
        super().close()

    def _give_back(self, redis_message_ids: list[str]) -> bool:
        """``ClaimsAhead.give_back`` for these messages; False (logged) when the store refused."""
        claims = self.broker.claims_ahead
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
        acks = self.broker.acks_key(self.queue_name)
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
        acks = self.broker.acks_key(self.queue_name)
        members: set[str] = {member.decode() for member in self.broker.client.smembers(acks)}  # type: ignore[union-attr]
        if not is_delay_queue(self.queue_name):
            members -= self.broker.in_hand(self.queue_name)
        redis_ids = sorted(members)
        if not redis_ids:
            return
        claims = self.broker.claims_ahead
        if claims is not None and not is_delay_queue(self.queue_name):
            # Claims made ahead for the dropped prefetch go back before the messages do.
            claims.give_back(redis_ids)
        for start in range(0, len(redis_ids), 1000):
            self.broker.do_requeue(self.queue_name, *redis_ids[start : start + 1000])
        log.warning("put back %d message(s) of queue %s dropped by a reconnect", len(redis_ids), self.queue_name)
