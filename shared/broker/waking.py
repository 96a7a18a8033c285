"""A Redis broker whose enqueues wake idle workers the moment a message arrives.

Dramatiq's Redis consumer polls an empty queue with a backoff of up to its
worker timeout, which makes an idle worker late by up to that much (a
second by default). Here every enqueue also pushes a token on
``jobrelay:wake:<queue>`` (trimmed to a few), and an idle consumer waits in
``BLPOP`` on that list (``services/worker/consumer.py``): it wakes at once when
work arrives and costs one command per wait while nothing does. Delay queues
keep Dramatiq's polling, since their messages become due by the clock, not by
an enqueue.

Each enqueue lands in its priority's band (``shared/broker/bands.py``), in its
namespace's lane when fair sharing is on and the message has a ``namespace``.

This module is the publishing half, which the API, the scheduler and the worker
share; the consuming half lives with the worker.
"""

from __future__ import annotations

from typing import Any

import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis, dq_name, xq_name
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message, get_encoder

from shared.broker.bands import (
    REQUEUE,
    fairness_key,
    lane_of_namespace,
    lanes_key,
    list_key_of,
    new_redis_id,
    queue_key,
    split_lane,
    waiting_keys,
)
from shared.broker.dead_letters import NACK, dead_letter_keys
from shared.broker.dispatch import ACK, FETCH_DELAYED

WAKE_PREFIX = "jobrelay:wake:"
#: What a Redis call raises when Redis is away: refused, reset, or a socket that stalled past its
#: timeout (redis-py's TimeoutError is not a ConnectionError, Bogdanp/dramatiq#894), or Dramatiq's
#: own ``ConnectionClosed`` that the broker raises in their place.
REDIS_DOWN: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError, ConnectionClosed)
#: Tokens kept per queue: enough to wake every idle consumer of a burst, never a pile.
WAKE_TOKENS = 64


def wake_key(queue_name: str) -> str:
    return WAKE_PREFIX + queue_name


def is_delay_queue(queue_name: str) -> bool:
    return queue_name.endswith(".DQ")


def acks_key(namespace: str, broker_id: str, queue_name: str) -> str:
    """A worker process's ack set of ``queue_name``: the messages it fetched and has not acked yet."""
    return f"{namespace}:__acks__.{broker_id}.{queue_name}"


class WakingRedisBroker(RedisBroker):
    """Dramatiq's Redis broker with bands, lanes, wake-ups, and none of Dramatiq's dispatch script.

    NOTE: Dramatiq's ``RedisBroker._dispatch`` (reached by any ``do_<command>`` not defined here)
    is never run: see ``shared/broker/dispatch.py``.
    """

    _requeue_script: Any = None
    _ack_script: Any = None
    _fetch_delayed_script: Any = None
    _nack_script: Any = None

    def __init__(self, *, fair_sharing: bool = True, **options: Any) -> None:
        super().__init__(**options)
        #: Whether a namespace's messages go to its lane (``FAIR_SHARING``); off, they share the queue's lists.
        #: NOTE: only where they go: every fetch serves every lane, so processes that differ agree.
        self.fair_sharing = fair_sharing

    def redis_id_for(self, options: dict[str, Any]) -> str:
        """A new Redis message id for a (non-delayed) message with these options: its band, and its lane."""
        lane = lane_of_namespace(options.get("namespace")) if self.fair_sharing else None
        return new_redis_id(options.get("priority"), lane)

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        """Dramatiq's ``RedisBroker.enqueue``, with a Redis message id naming the message's band.

        A delayed message waits in the delay queue's one list (a plain id); it gets its band's
        id when it is due and the worker enqueues it again.
        """
        queue_name = message.queue_name
        options: dict[str, Any] = {"redis_message_id": self.redis_id_for(message.options)}
        if delay is not None:
            queue_name = dq_name(queue_name)
            options = {"redis_message_id": new_redis_id(0), "eta": current_millis() + delay}
            message = message.copy(queue_name=queue_name, options=options)
        else:
            message = message.copy(options=options)
        self.emit_before("enqueue", message, delay)
        self.do_enqueue(queue_name, message.options["redis_message_id"], message.encode())
        self.emit_after("enqueue", message, delay)
        return message

    def do_enqueue(self, queue_name: str, message_id: str, data: bytes) -> None:
        """Dramatiq's enqueue (the body into the queue's hash, the id onto its band's list, in its lane)
        and the wake-up token, in one MULTI/EXEC round trip.

        NOTE: a Redis that is away raises ``ConnectionClosed``, as Dramatiq's own broker does:
        a worker's consumer thread enqueues due delayed messages, and handles only that as a
        connection loss (reconnecting); anything else made it close and, failing that too, end.
        """
        key = queue_key(self.namespace, queue_name)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key + ".msgs", message_id, data)
        pipe.rpush(list_key_of(key, message_id), message_id)
        lane, _ = split_lane(message_id)
        if lane is not None and not is_delay_queue(queue_name):
            # NOTE: after the push: a fetch between the two drops a lane it finds empty.
            pipe.sadd(lanes_key(key), lane)
        self._wake_in(pipe, {queue_name})
        try:
            pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise ConnectionClosed(exc) from None

    def enqueue_many(self, messages: list[tuple[Message[Any], int | None]]) -> None:
        """``enqueue`` for many messages (with their delays in ms) in one round trip.

        Like ``enqueue``, each copy gets its own ``redis_message_id`` (naming its band)
        and a delayed one goes to the delay queue with its ``eta``.
        """
        sent: list[tuple[Message[Any], int | None]] = []
        # NOTE: what Dramatiq's dispatch script does per enqueue (an HSET of the message and an
        # RPUSH of its id), done per queue for all the messages at once: one command per queue
        # instead of one script call per message, in one MULTI/EXEC round trip.
        by_queue: dict[str, dict[str, bytes]] = {}
        by_list: dict[str, list[str]] = {}
        lanes: dict[str, set[str]] = {}
        encode = get_encoder().encode
        now_ms = current_millis()
        for message, delay in messages:
            # NOTE: ``Message.copy`` and ``Message.encode`` go through ``dataclasses`` per
            # message, which cost more than the rest of a batch's publish; this builds the
            # same copy and the same encoding directly.
            queue_name = message.queue_name
            if delay is not None:
                queue_name = dq_name(queue_name)
                redis_message_id = new_redis_id(0)
                options = {**message.options, "redis_message_id": redis_message_id, "eta": now_ms + delay}
            else:
                redis_message_id = self.redis_id_for(message.options)
                options = {**message.options, "redis_message_id": redis_message_id}
                lane, _ = split_lane(redis_message_id)
                if lane is not None:
                    lanes.setdefault(queue_key(self.namespace, queue_name), set()).add(lane)
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
            key = queue_key(self.namespace, queue_name)
            by_list.setdefault(list_key_of(key, redis_message_id), []).append(redis_message_id)
        pipe = self.client.pipeline(transaction=True)
        for queue_name, encoded in by_queue.items():
            pipe.hset(f"{self.namespace}:{queue_name}.msgs", mapping=encoded)  # type: ignore[arg-type]
        for list_key, ids in by_list.items():
            pipe.rpush(list_key, *ids)
        for key, names in lanes.items():
            pipe.sadd(lanes_key(key), *names)
        self._wake_in(pipe, set(by_queue))
        pipe.execute()
        for message, delay in sent:
            self.emit_after("enqueue", message, delay)

    def do_requeue(self, queue_name: str, *redis_message_ids: str) -> int:
        """Dramatiq's requeue (out of this broker's ack set, back to the queue), into each message's
        band and at its front: these messages were fetched before anything waiting now."""
        if self._requeue_script is None:
            self._requeue_script = self.client.register_script(REQUEUE)
        key = queue_key(self.namespace, queue_name)
        acks = acks_key(self.namespace, self.broker_id, queue_name)
        return int(self._requeue_script(keys=[acks, key, key + ".msgs"], args=list(redis_message_ids)))

    def do_nack(self, queue_name: str, redis_message_id: str, job_id: str | None = None) -> int:
        """Dramatiq's nack (out of this broker's ack set, into the dead letters), but the dead letter is
        filed under its job id (``shared/broker/dead_letters.py``); with none known (a body that does
        not decode), under its Redis id. Returns 1 if the message moved."""
        if self._nack_script is None:
            self._nack_script = self.client.register_script(NACK)
        keys = [
            acks_key(self.namespace, self.broker_id, queue_name),
            queue_key(self.namespace, queue_name) + ".msgs",
            *dead_letter_keys(self.namespace, queue_name),
        ]
        args = [redis_message_id, job_id or redis_message_id, current_millis()]
        return int(self._nack_script(keys=keys, args=args))

    def flush(self, queue_name: str) -> None:
        """Dramatiq's flush (the queue, its delay queue, this broker's ack sets, its old dead letters),
        every band of every lane, the dead letters."""
        key = queue_key(self.namespace, queue_name)
        delayed = queue_key(self.namespace, dq_name(queue_name))
        dead = queue_key(self.namespace, xq_name(queue_name))
        acks = [acks_key(self.namespace, self.broker_id, name) for name in (queue_name, dq_name(queue_name))]
        self.client.delete(
            *waiting_keys(self.client, key),
            lanes_key(key),
            key + ".msgs",
            delayed,
            delayed + ".msgs",
            *acks,
            dead,
            dead + ".msgs",
            *dead_letter_keys(self.namespace, queue_name),
            fairness_key(self.namespace, queue_name),
        )

    def do_fetch(self, queue_name: str, prefetch: int) -> list[bytes | None]:
        """Dramatiq's fetch of a delay queue (a queue's own fetch is ``BandedFetch``): up to
        ``prefetch`` bodies, their ids moved into this broker's ack set."""
        if self._fetch_delayed_script is None:
            self._fetch_delayed_script = self.client.register_script(FETCH_DELAYED)
        key = queue_key(self.namespace, queue_name)
        keys = [key, key + ".msgs", acks_key(self.namespace, self.broker_id, queue_name)]
        result: list[bytes | None] = self._fetch_delayed_script(
            keys=keys, args=[min(prefetch, self._max_unpack_size())]
        )
        return result

    def do_ack(self, queue_name: str, *redis_message_ids: str) -> int:
        """Dramatiq's ack: out of this broker's ack set and out of the queue's hash; how many were acked."""
        if self._ack_script is None:
            self._ack_script = self.client.register_script(ACK)
        keys = [acks_key(self.namespace, self.broker_id, queue_name), queue_key(self.namespace, queue_name) + ".msgs"]
        return int(self._ack_script(keys=keys, args=list(redis_message_ids)))

    def do_qsize(self, queue_name: str) -> int:
        """Dramatiq's qsize (``join`` waits for 0): the bodies stored and the ids this broker has not
        acked, of the queue and of its delay queue."""
        pipe = self.client.pipeline(transaction=False)
        for name in (queue_name, dq_name(queue_name)):
            pipe.hlen(queue_key(self.namespace, name) + ".msgs")
            pipe.scard(acks_key(self.namespace, self.broker_id, name))
        return sum(int(size) for size in pipe.execute())

    def _dispatch(self, command: str) -> Any:
        raise AssertionError(f"Dramatiq's dispatch script ({command!r}) is not run here: see shared/broker/dispatch.py")

    def _wake_in(self, pipe: redis.client.Pipeline, queues: set[str]) -> None:
        for queue_name in queues:
            if not is_delay_queue(queue_name):
                pipe.lpush(wake_key(queue_name), 1)
                pipe.ltrim(wake_key(queue_name), 0, WAKE_TOKENS - 1)
