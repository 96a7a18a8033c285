"""Priority bands: a queue's waiting messages in one Redis list per priority, fetched highest first.

Dramatiq keeps a queue's waiting message ids in one list, ``dramatiq:<q>``, so a
queue runs first in, first out whatever a job's priority. Here (as Celery's Redis
transport does) each priority 0-9 has a list of its own: priority 0 stays in
``dramatiq:<q>`` itself, priority p in ``dramatiq:<q>.P<p>`` (queue names are
lowercase, so no queue's list is named like a band). Everything else stays per
queue as Dramatiq has it: the message bodies in ``dramatiq:<q>.msgs``, a worker's
ack set, the dead letters, the delay queue ``dramatiq:<q>.DQ`` (one list: its
messages wait for their time, not for their turn).

A message's band is written into its Redis message id (``P7.<uuid>``; a priority-0
id is a bare uuid, as Dramatiq makes them), so every script that puts a message
back (a requeue, the crash recovery) finds its list without decoding the body.

The fetch (``FETCH``) takes from the highest band that has messages. So that a
low priority is never starved for good, it keeps a streak per queue: after
``FAIR_EVERY`` messages taken in a row from a higher band while a lower band
waited, the next message comes from a lower band, the lower bands taking these
turns one after the other (highest first). The same script returns nothing while
the queue is paused (``paused_key``), at no extra round trip.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from shared.ids import random_uuid

#: Priorities 0-9, one band each.
BANDS = 10
#: Messages taken in a row from higher bands while a lower one waits before a lower band gets a turn.
FAIR_EVERY = 10
PAUSED_PREFIX = "jobrelay:paused:"
RESUME_PREFIX = "jobrelay:resume:"


def band_of_priority(priority: object) -> int:
    """The band of a message's ``priority`` option (absent or malformed: 0)."""
    if isinstance(priority, int) and not isinstance(priority, bool):
        return min(max(priority, 0), BANDS - 1)
    return 0


def new_redis_id(priority: object) -> str:
    band = band_of_priority(priority)
    return random_uuid() if band == 0 else f"P{band}.{random_uuid()}"


def band_of_id(redis_message_id: str) -> int:
    if len(redis_message_id) > 3 and redis_message_id[0] == "P" and redis_message_id[2] == ".":
        return int(redis_message_id[1])
    return 0


def band_key(queue_key: str, band: int) -> str:
    """The list of ``band`` of the queue whose (band 0) list is ``queue_key``."""
    return queue_key if band == 0 else f"{queue_key}.P{band}"


def band_keys(queue_key: str) -> list[str]:
    """Every band's list, highest priority first."""
    return [band_key(queue_key, band) for band in reversed(range(BANDS))]


def list_key_of(queue_key: str, redis_message_id: str) -> str:
    """The list a message of this queue waits in (a delay queue has one list)."""
    if queue_key.endswith(".DQ"):
        return queue_key
    return band_key(queue_key, band_of_id(redis_message_id))


def paused_key(queue_name: str) -> str:
    """Present while the queue is paused: the Redis mirror of the store's pause (``shared/store/pauses.py``)."""
    return PAUSED_PREFIX + queue_name


def resume_key(queue_name: str) -> str:
    """Tokens a resume leaves for the consumers that wait on a paused queue."""
    return RESUME_PREFIX + queue_name


#: A Lua function: the list a message id goes back to, given its queue's list (``list_key_of``).
LUA_LIST_OF = """
local function list_of(queue_key, id)
  if string.sub(queue_key, -3) ~= '.DQ' and string.byte(id, 1) == 80 and string.byte(id, 3) == 46 then
    return queue_key .. '.P' .. string.sub(id, 2, 2)
  end
  return queue_key
end
"""

# KEYS: the queue's list (band 0), its message hash, the worker's ack set, the heartbeats, the fairness
# state hash, the paused flag. ARGV: how many at most, the worker id, the time in ms, FAIR_EVERY.
# Returns false while paused, else the bodies of the messages taken (moved into the ack set), as
# Dramatiq's fetch does (a missing body is nil). NOTE: the band lists are derived from KEYS[1] inside
# the script, as Dramatiq's dispatch script derives its keys: fine on one Redis, not on a cluster.
FETCH = """
if redis.call('exists', KEYS[6]) == 1 then return false end
redis.call('zadd', KEYS[4], ARGV[3], ARGV[2])
local want = tonumber(ARGV[1])
local every = tonumber(ARGV[4])
local keys, lens = {}, {}
for b = 0, 9 do
  if b == 0 then keys[b] = KEYS[1] else keys[b] = KEYS[1] .. '.P' .. b end
  lens[b] = redis.call('llen', keys[b])
end
local streak, turn, loaded, changed = 0, 0, false, false
local ids = {}
while #ids < want do
  local top = -1
  for b = 9, 0, -1 do
    if lens[b] > 0 then top = b; break end
  end
  if top < 0 then break end
  local lower = false
  for b = top - 1, 0, -1 do
    if lens[b] > 0 then lower = true; break end
  end
  local band, n = top, want - #ids
  if lower and not loaded then
    local state = redis.call('hmget', KEYS[5], 'streak', 'turn')
    streak, turn, loaded = tonumber(state[1]) or 0, tonumber(state[2]) or 0, true
  end
  if not lower then
    if streak ~= 0 then streak, changed = 0, true end
  elseif streak >= every then
    for i = 1, 10 do
      local b = (turn - i) % 10
      if b < top and lens[b] > 0 then band = b; break end
    end
    n, streak, turn, changed = 1, 0, band, true
  else
    n = math.min(n, every - streak, lens[top])
    streak, changed = streak + n, true
  end
  n = math.min(n, lens[band])
  local got = redis.call('lrange', keys[band], 0, n - 1)
  redis.call('ltrim', keys[band], n, -1)
  lens[band] = lens[band] - n
  for _, id in ipairs(got) do ids[#ids + 1] = id end
end
if changed then redis.call('hset', KEYS[5], 'streak', streak, 'turn', turn) end
if #ids == 0 then return {} end
redis.call('sadd', KEYS[3], unpack(ids))
return redis.call('hmget', KEYS[2], unpack(ids))
"""

# KEYS: the ack set, the queue's list, its message hash. ARGV: redis message ids. Dramatiq's "requeue"
# (out of the ack set, back if its body is still there), but to the front of each message's band, in
# the order given: they were fetched before anything now waiting. Returns how many went back.
REQUEUE = (
    LUA_LIST_OF
    + """
local n = 0
for i = #ARGV, 1, -1 do
  local id = ARGV[i]
  if redis.call('srem', KEYS[1], id) > 0 and redis.call('hexists', KEYS[3], id) == 1 then
    redis.call('lpush', list_of(KEYS[2], id), id)
    n = n + 1
  end
end
return n
"""
)


def queue_key(namespace: str, queue_name: str) -> str:
    return f"{namespace}:{queue_name}"


def fairness_key(namespace: str, queue_name: str) -> str:
    """The fetch's streak and turn of ``queue_name`` (see ``FETCH``)."""
    return f"{namespace}:{queue_name}.fairness"


class BandedFetch:
    """A worker's fetch of a (non-delay) queue: ``FETCH``, one round trip, into its ack set."""

    def __init__(self, client: redis.Redis, *, namespace: str, worker_id: str, acks: str, queue_name: str) -> None:
        self.client = client
        self.worker_id = worker_id
        key = queue_key(namespace, queue_name)
        self._keys = [
            key,
            key + ".msgs",
            acks,
            f"{namespace}:__heartbeats__",
            fairness_key(namespace, queue_name),
            paused_key(queue_name),
        ]
        self._script: Any = client.register_script(FETCH)

    def __call__(self, count: int) -> list[bytes | None] | None:
        """Up to ``count`` messages' bodies, highest band first; None while the queue is paused."""
        args = [count, self.worker_id, int(time.time() * 1000), FAIR_EVERY]
        result: list[bytes | None] | None = self._script(keys=self._keys, args=args)
        return result
