"""A worker process's ack sets: the messages each of its queues fetched and has not acked yet.

Dramatiq keeps them in Redis (``dramatiq:__acks__.<worker>.<queue>``) for the crash
recovery; this process also remembers which of them its worker threads hold now, so a
consumer that replaces another puts back only what nobody holds.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import redis
from dramatiq.common import current_millis

from shared.broker.dead_letters import dead_letter_keys
from shared.broker.dispatch import ACK
from shared.broker.waking import acks_key

#: Dramatiq's "nack" (dispatch.lua) for many messages of one queue: out of the worker's ack set and the
#: queue's message hash, into its dead letters under their job ids (``shared/broker/dead_letters.py``),
#: scored by the time of death. KEYS: the ack set, the message hash, the dead-letter set and hash;
#: ARGV: the time in ms, then pairs of (Redis message id, job id).
_DEAD_LETTER_MANY = """
local dead = 0
for i = 2, #ARGV, 2 do
    local message_id, job_id = ARGV[i], ARGV[i + 1]
    if redis.call("srem", KEYS[1], message_id) > 0 then
        local message = redis.call("hget", KEYS[2], message_id)
        if message then
            redis.call("zadd", KEYS[3], ARGV[1], job_id)
            redis.call("hset", KEYS[4], job_id, message)
            redis.call("hdel", KEYS[2], message_id)
            dead = dead + 1
        end
    end
end
return dead
"""
#: Messages dead-lettered per script call: each call's work stays bounded.
DEAD_LETTER_CHUNK = 100


class AckSets:
    """This process's ack sets in Redis, and which of their messages its worker threads hold now."""

    def __init__(self, client: redis.Redis, *, namespace: str, owner: str) -> None:
        self.client = client
        self.namespace = namespace
        self.owner = owner
        self._ack_script: Any = None
        self._dead_letter_script: Any = None
        #: Per queue, the Redis message ids this process's consumers handed to its worker
        #: threads and has not acked, nacked or requeued yet: the only legitimate members
        #: of its ack set once a consumer is replaced (see ``_WakingConsumer``).
        self._in_hand: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def key(self, queue_name: str) -> str:
        return acks_key(self.namespace, self.owner, queue_name)

    def hand_out(self, queue_name: str, redis_message_id: str) -> None:
        with self._lock:
            self._in_hand.setdefault(queue_name, set()).add(redis_message_id)

    def handed_back(self, queue_name: str, redis_message_ids: Iterable[str]) -> None:
        with self._lock:
            self._in_hand.get(queue_name, set()).difference_update(redis_message_ids)

    def in_hand(self, queue_name: str) -> set[str]:
        with self._lock:
            return set(self._in_hand.get(queue_name, ()))

    def ack_many(self, acks: list[tuple[str, str]]) -> None:
        """Dramatiq's ack of many ``(queue name, redis message id)`` pairs, one script call per queue."""
        by_queue: dict[str, list[str]] = {}
        for queue_name, redis_message_id in acks:
            by_queue.setdefault(queue_name, []).append(redis_message_id)
        if self._ack_script is None:
            self._ack_script = self.client.register_script(ACK)
        for queue_name, ids in by_queue.items():
            keys = [self.key(queue_name), f"{self.namespace}:{queue_name}.msgs"]
            self._ack_script(keys=keys, args=ids)
            self.handed_back(queue_name, ids)

    def dead_letter_many(self, nacks: list[tuple[str, str, str]]) -> None:
        """Dramatiq's nack (to the dead letters) of many ``(queue name, redis message id, job id)``,
        ``DEAD_LETTER_CHUNK`` per script call."""
        by_queue: dict[str, list[tuple[str, str]]] = {}
        for queue_name, redis_message_id, job_id in nacks:
            by_queue.setdefault(queue_name, []).append((redis_message_id, job_id))
        if self._dead_letter_script is None:
            self._dead_letter_script = self.client.register_script(_DEAD_LETTER_MANY)
        for queue_name, pairs in by_queue.items():
            keys = [
                self.key(queue_name),
                f"{self.namespace}:{queue_name}.msgs",
                *dead_letter_keys(self.namespace, queue_name),
            ]
            for start in range(0, len(pairs), DEAD_LETTER_CHUNK):
                chunk = pairs[start : start + DEAD_LETTER_CHUNK]
                self._dead_letter_script(keys=keys, args=[current_millis(), *(v for pair in chunk for v in pair)])
            self.handed_back(queue_name, [redis_message_id for redis_message_id, _ in pairs])
