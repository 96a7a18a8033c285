"""Concurrency slots: how many jobs of a bucket run at once, across every worker, and who waits for one.

A bucket (a task, or a task and a key value) has a sorted set of slots in
Redis, each member a holder (``<worker id>|<redis message id>``) scored by its
expiry in ms, and a waiting list of Redis message ids. Taking a slot and, when
none is free, putting a copy of the message (a new Redis id, its body in the
queue's message hash) on the waiting list is one script (``_ACQUIRE``), and so is giving a slot back and moving as
many waiters as there are free slots to the front of their queue with a wake-up
token (``_RELEASE``): no slot is freed between a refusal and its wait, so no
waiter is forgotten. A waiting message keeps its body in its queue's message
hash, where the reconcile (``services/scheduler/reconcile.py``) finds it.

A worker that dies keeps no slot: the crash recovery gives back every slot of
the worker id (``release_owner``, from ``shared/broker/orphans.py``), slots
expire ``ttl_s`` after their last renewal by the holder's heartbeat, and each
heartbeat moves the waiters of buckets whose slots expired (``pump``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import redis

from shared.broker.bands import LUA_LIST_OF
from shared.broker.waking import WAKE_TOKENS, wake_key

log = logging.getLogger(__name__)

PREFIX = "jobrelay:flow:"
#: The buckets that have waiters, each as its ``Bucket.descriptor``.
WAITING_BUCKETS = PREFIX + "waiting"

# KEYS: slots, waiting list, the queue's message hash, the worker's held hash, WAITING_BUCKETS.
# ARGV: holder, ttl ms, limit, descriptor, whether to wait (1/0), the waiting copy's redis id, its body.
# Returns 1 (slot taken), 0 (the copy now waits), -1 (no slot, and not asked to wait).
_ACQUIRE = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = now + tonumber(ARGV[2])
redis.call('zremrangebyscore', KEYS[1], '-inf', now)
if redis.call('zscore', KEYS[1], ARGV[1]) then
  redis.call('zadd', KEYS[1], expiry, ARGV[1])
  return 1
end
if redis.call('zcard', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('zadd', KEYS[1], expiry, ARGV[1])
  redis.call('hset', KEYS[4], ARGV[1], ARGV[4])
  return 1
end
if ARGV[5] ~= '1' then return -1 end
redis.call('hset', KEYS[3], ARGV[6], ARGV[7])
redis.call('rpush', KEYS[2], ARGV[6])
redis.call('sadd', KEYS[5], ARGV[4])
return 0
"""

# KEYS: slots, waiting list, the queue list, the queue's message hash, its wake-up list, the holder's
# held hash, WAITING_BUCKETS. ARGV: holder ('' to release none), limit, descriptor, wake tokens kept.
# Returns how many waiters went back to the queue, each to its priority band (shared/broker/bands.py).
_RELEASE = (
    LUA_LIST_OF
    + """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] ~= '' then
  redis.call('zrem', KEYS[1], ARGV[1])
  redis.call('hdel', KEYS[6], ARGV[1])
end
redis.call('zremrangebyscore', KEYS[1], '-inf', now)
local free = tonumber(ARGV[2]) - redis.call('zcard', KEYS[1])
local ids = {}
while #ids < free do
  local id = redis.call('lpop', KEYS[2])
  if not id then break end
  if redis.call('hexists', KEYS[4], id) == 1 then table.insert(ids, id) end
end
for i = #ids, 1, -1 do redis.call('lpush', list_of(KEYS[3], ids[i]), ids[i]) end
if redis.call('llen', KEYS[2]) == 0 then redis.call('srem', KEYS[7], ARGV[3]) end
if #ids > 0 then
  redis.call('lpush', KEYS[5], 1)
  redis.call('ltrim', KEYS[5], 0, tonumber(ARGV[4]) - 1)
end
return #ids
"""
)


@dataclass(frozen=True)
class Waiting:
    """The copy of a refused message that waits for a slot: its own Redis id and its encoded body."""

    redis_message_id: str
    body: bytes


@dataclass(frozen=True)
class Bucket:
    """One concurrency bucket: its name (``task`` or ``task:<key value>``), the queue of its jobs, its limit."""

    name: str
    queue: str
    limit: int

    @property
    def descriptor(self) -> str:
        return json.dumps([self.name, self.queue, self.limit], separators=(",", ":"))

    @classmethod
    def from_descriptor(cls, text: str | bytes) -> Bucket:
        name, queue, limit = json.loads(text)
        return cls(str(name), str(queue), int(limit))


def slots_key(bucket: str) -> str:
    return f"{PREFIX}slots:{bucket}"


def waiting_key(bucket: str) -> str:
    return f"{PREFIX}wait:{bucket}"


def held_key(owner: str) -> str:
    """The slots a worker holds: holder → bucket descriptor (what the crash recovery gives back)."""
    return f"{PREFIX}held:{owner}"


def holder_name(owner: str, redis_message_id: str) -> str:
    return f"{owner}|{redis_message_id}"


class ConcurrencySlots:
    """The slots and waiting lists of every bucket, in one Redis (``namespace``: Dramatiq's key prefix)."""

    def __init__(self, client: redis.Redis, *, namespace: str, ttl_s: float) -> None:
        self.client = client
        self.namespace = namespace
        self.ttl_ms = int(ttl_s * 1000)
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)

    def acquire(self, bucket: Bucket, *, owner: str, redis_message_id: str, waiting: Waiting | None = None) -> int:
        """Take a slot for this message (1); with ``waiting``, else put that copy on the waiting list (0).

        -1: no slot, and no copy given to wait.

        NOTE: the copy that waits has a Redis id of its own. The delivery refused is acked as any
        skipped one, after its hooks: had its own id waited, a slot freed meanwhile could send it
        back, fetched again under the same id, and that late ack would delete the message.
        """
        queue_key = f"{self.namespace}:{bucket.queue}"
        keys = [slots_key(bucket.name), waiting_key(bucket.name), queue_key + ".msgs", held_key(owner), WAITING_BUCKETS]
        holder = holder_name(owner, redis_message_id)
        args: list[str | int | bytes] = [holder, self.ttl_ms, bucket.limit, bucket.descriptor]
        args += [1, waiting.redis_message_id, waiting.body] if waiting is not None else [0, "", ""]
        return int(self._acquire(keys=keys, args=args))

    def release(self, bucket: Bucket, *, holder: str = "", owner: str = "") -> int:
        """Give back ``holder``'s slot (none if empty) and send waiters to the free slots; how many went."""
        queue_key = f"{self.namespace}:{bucket.queue}"
        keys = [
            slots_key(bucket.name),
            waiting_key(bucket.name),
            queue_key,
            queue_key + ".msgs",
            wake_key(bucket.queue),
            held_key(owner),
            WAITING_BUCKETS,
        ]
        return int(self._release(keys=keys, args=[holder, bucket.limit, bucket.descriptor, WAKE_TOKENS]))

    def renew(self, held: Iterable[tuple[Bucket, str]]) -> None:
        """Push the expiry of these ``(bucket, holder)`` slots ``ttl_s`` past now (slots that expired stay gone)."""
        pairs = list(held)
        if not pairs:
            return
        now_s, micros = self.client.time()
        expiry = int(now_s) * 1000 + int(micros) // 1000 + self.ttl_ms
        pipe = self.client.pipeline(transaction=False)
        for bucket, holder in pairs:
            pipe.zadd(slots_key(bucket.name), {holder: expiry}, xx=True)
        pipe.execute()

    def pump(self) -> int:
        """Send the waiters of every bucket with free slots (expired ones) to their queue; how many went."""
        moved = 0
        for descriptor in self.client.smembers(WAITING_BUCKETS):
            moved += self.release(Bucket.from_descriptor(descriptor))
        return moved

    def release_owner(self, owner: str) -> int:
        """Give back every slot a (dead) worker holds and wake their waiters; how many slots."""
        held: dict[bytes, bytes] = self.client.hgetall(held_key(owner))  # type: ignore[assignment]
        for holder, descriptor in held.items():
            self.release(Bucket.from_descriptor(descriptor), holder=holder.decode(), owner=owner)
        self.client.delete(held_key(owner))
        if held:
            log.warning("gave back %d concurrency slot(s) of worker %s", len(held), owner)
        return len(held)

    def holders(self, bucket: str) -> list[str]:
        """The holders of a bucket's live slots (for tests and operators)."""
        members: list[bytes] = self.client.zrange(slots_key(bucket), 0, -1)  # type: ignore[assignment]
        return [member.decode() for member in members]

    def waiting(self, bucket: str) -> int:
        return int(self.client.llen(waiting_key(bucket)))
