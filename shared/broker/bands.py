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

Fair sharing between tenants (``FAIR_SHARING``, on by default): a message of a
namespace's job waits in its namespace's lane, a band list set of its own
(``dramatiq:<q>.T.<namespace>``, ``...T.<namespace>.P<p>``), and its Redis id
says so (``T.<namespace>.P7.<uuid>``: namespaces hold no ``.``). The jobs of
keys without a namespace keep the queue's own lists, the shared lane. The
queue's set ``dramatiq:<q>.lanes`` names the namespaces that may have messages
waiting: whatever pushes a lane's message adds its namespace after the push, the
fetch drops a namespace whose lane it found empty. The fetch gives every lane
with messages an equal share of what it takes (one each when it takes one),
starting after the lane it served last, so the lanes take turns whatever their
lengths, as Sidekiq Enterprise's and BullMQ Pro's groups do: one namespace's
burst of 100,000 jobs delays another's single job by one turn, not by the burst.
Within a lane the bands and the starvation rule apply as above (a streak per
lane). With no namespace waiting the fetch is the single-lane one.
"""

from __future__ import annotations

from typing import Any

import redis

from shared.ids import random_uuid
from shared.settings import NAMESPACE

#: Priorities 0-9, one band each.
BANDS = 10
#: Messages taken in a row from higher bands while a lower one waits before a lower band gets a turn.
FAIR_EVERY = 10
#: A lane message's Redis id starts with it, then its namespace and a dot.
LANE_PREFIX = "T."
PAUSED_PREFIX = "jobrelay:paused:"
RESUME_PREFIX = "jobrelay:resume:"


def band_of_priority(priority: object) -> int:
    """The band of a message's ``priority`` option (absent or malformed: 0)."""
    if isinstance(priority, int) and not isinstance(priority, bool):
        return min(max(priority, 0), BANDS - 1)
    return 0


def lane_of_namespace(namespace: object) -> str | None:
    """The lane of a message's ``namespace`` option (absent or malformed: None, the shared lane)."""
    return namespace if isinstance(namespace, str) and NAMESPACE.fullmatch(namespace) else None


def new_redis_id(priority: object, lane: str | None = None) -> str:
    band = band_of_priority(priority)
    plain = random_uuid() if band == 0 else f"P{band}.{random_uuid()}"
    return plain if lane is None else f"{LANE_PREFIX}{lane}.{plain}"


def split_lane(redis_message_id: str) -> tuple[str | None, str]:
    """The id's lane (None: the shared one) and the rest of it (a band's id)."""
    if redis_message_id.startswith(LANE_PREFIX):
        lane, dot, rest = redis_message_id[len(LANE_PREFIX) :].partition(".")
        if dot:
            return lane, rest
    return None, redis_message_id


def band_of_id(redis_message_id: str) -> int:
    _, plain = split_lane(redis_message_id)
    if len(plain) > 3 and plain[0] == "P" and plain[2] == ".":
        return int(plain[1])
    return 0


def band_key(queue_key: str, band: int) -> str:
    """The list of ``band`` of the queue whose (band 0) list is ``queue_key``."""
    return queue_key if band == 0 else f"{queue_key}.P{band}"


def band_keys(queue_key: str) -> list[str]:
    """Every band's list, highest priority first."""
    return [band_key(queue_key, band) for band in reversed(range(BANDS))]


def lane_key(queue_key: str, lane: str | None) -> str:
    """The band 0 list of a lane of the queue (None: the queue's own list, the shared lane)."""
    return queue_key if lane is None else f"{queue_key}.{LANE_PREFIX}{lane}"


def lanes_key(queue_key: str) -> str:
    """The set of the namespaces whose lanes of the queue may hold messages."""
    return f"{queue_key}.lanes"


def waiting_keys(client: redis.Redis, queue_key: str) -> list[str]:
    """Every list a message of the queue may wait in: each band of the shared lane and of each namespace's."""
    lanes = sorted(member.decode() for member in client.smembers(lanes_key(queue_key)))  # type: ignore[union-attr]
    return [key for lane in [None, *lanes] for key in band_keys(lane_key(queue_key, lane))]


def list_key_of(queue_key: str, redis_message_id: str) -> str:
    """The list a message of this queue waits in (a delay queue has one list)."""
    if queue_key.endswith(".DQ"):
        return queue_key
    lane, _ = split_lane(redis_message_id)
    return band_key(lane_key(queue_key, lane), band_of_id(redis_message_id))


def paused_key(queue_name: str) -> str:
    """Present while the queue is paused: the Redis mirror of the store's pause (``shared/store/pauses.py``)."""
    return PAUSED_PREFIX + queue_name


def resume_key(queue_name: str) -> str:
    """Tokens a resume leaves for the consumers that wait on a paused queue."""
    return RESUME_PREFIX + queue_name


#: A Lua function: the list a message id goes back to, given its queue's list (``list_key_of``).
#: NOTE: every caller pushes the id onto that list next, so a lane's namespace is added to the
#: queue's lanes set here (the script is atomic: no fetch can drop it in between).
LUA_LIST_OF = """
local function list_of(queue_key, id)
  if string.sub(queue_key, -3) == '.DQ' then return queue_key end
  local base = queue_key
  if string.sub(id, 1, 2) == 'T.' then
    local dot = string.find(id, '.', 3, true)
    if dot then
      local lane = string.sub(id, 3, dot - 1)
      redis.call('sadd', queue_key .. '.lanes', lane)
      base = queue_key .. '.T.' .. lane
      id = string.sub(id, dot + 1)
    end
  end
  if string.byte(id, 1) == 80 and string.byte(id, 3) == 46 then
    return base .. '.P' .. string.sub(id, 2, 2)
  end
  return base
end
"""

# KEYS: the queue's list (band 0), its message hash, the worker's ack set, the fairness state hash, the
# paused flag, the lanes set. ARGV: how many at most, FAIR_EVERY. Returns false while paused, else the
# bodies of the messages taken (moved into the ack set), as Dramatiq's fetch does (a missing body is
# nil). NOTE: the band and lane lists, many and changing, are derived from KEYS[1] inside the script:
# named after the queue's key, they share its hash slot wherever its key does (on a cluster, the hash
# tag). The worker's heartbeat is its heartbeat thread's write, not the fetch's (a global key).
FETCH = """
if redis.call('exists', KEYS[5]) == 1 then return false end
local want = tonumber(ARGV[1])
local every = tonumber(ARGV[2])
local ids = {}

-- Up to n ids of one lane (prefix: its band 0 list) into ids, highest band first but a lower band
-- once every FAIR_EVERY in a row; returns how many were taken and how many are left in the lane.
local function take(lane, prefix, n)
  local keys, lens, total = {}, {}, 0
  for b = 0, 9 do
    if b == 0 then keys[b] = prefix else keys[b] = prefix .. '.P' .. b end
    lens[b] = redis.call('llen', keys[b])
    total = total + lens[b]
  end
  if total == 0 then return 0, 0 end
  local sfield, tfield = 'streak', 'turn'
  if lane ~= '' then sfield, tfield = 'streak:' .. lane, 'turn:' .. lane end
  local streak, turn, loaded, changed = 0, 0, false, false
  local taken = 0
  while taken < n do
    local top = -1
    for b = 9, 0, -1 do
      if lens[b] > 0 then top = b; break end
    end
    if top < 0 then break end
    local lower = false
    for b = top - 1, 0, -1 do
      if lens[b] > 0 then lower = true; break end
    end
    local band, k = top, n - taken
    if lower and not loaded then
      local state = redis.call('hmget', KEYS[4], sfield, tfield)
      streak, turn, loaded = tonumber(state[1]) or 0, tonumber(state[2]) or 0, true
    end
    if not lower then
      if streak ~= 0 then streak, changed = 0, true end
    elseif streak >= every then
      for i = 1, 10 do
        local b = (turn - i) % 10
        if b < top and lens[b] > 0 then band = b; break end
      end
      k, streak, turn, changed = 1, 0, band, true
    else
      k = math.min(k, every - streak, lens[top])
      streak, changed = streak + k, true
    end
    k = math.min(k, lens[band])
    local got = redis.call('lrange', keys[band], 0, k - 1)
    redis.call('ltrim', keys[band], k, -1)
    lens[band] = lens[band] - k
    for _, id in ipairs(got) do ids[#ids + 1] = id end
    taken = taken + k
  end
  if changed then redis.call('hset', KEYS[4], sfield, streak, tfield, turn) end
  return taken, total - taken
end

local lanes = redis.call('smembers', KEYS[6])
if #lanes == 0 then
  take('', KEYS[1], want)
else
  -- The shared lane ('') and each namespace's, in a fixed order, starting after the one served last.
  table.sort(lanes)
  table.insert(lanes, 1, '')
  local last = redis.call('hget', KEYS[4], 'lane')
  local start = 1
  if last then
    for i, lane in ipairs(lanes) do
      if lane == last then start = i % #lanes + 1; break end
    end
  end
  local active = {}
  for i = 0, #lanes - 1 do active[#active + 1] = lanes[(start - 1 + i) % #lanes + 1] end
  local served = nil
  while #ids < want and #active > 0 do
    local share = math.max(1, math.floor((want - #ids) / #active))
    local still = {}
    for _, lane in ipairs(active) do
      if #ids < want then
        local prefix = KEYS[1]
        if lane ~= '' then prefix = KEYS[1] .. '.T.' .. lane end
        local taken, left = take(lane, prefix, math.min(share, want - #ids))
        if taken > 0 then served = lane end
        if left > 0 then
          still[#still + 1] = lane
        elseif lane ~= '' then
          redis.call('srem', KEYS[6], lane)
        end
      end
    end
    active = still
  end
  if served then redis.call('hset', KEYS[4], 'lane', served) end
end
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
    """The fetch's streaks and turns of ``queue_name``, and the lane it served last (see ``FETCH``)."""
    return f"{namespace}:{queue_name}.fairness"


class BandedFetch:
    """A worker's fetch of a (non-delay) queue: ``FETCH``, one round trip, into its ack set."""

    def __init__(self, client: redis.Redis, *, namespace: str, acks: str, queue_name: str) -> None:
        self.client = client
        key = queue_key(namespace, queue_name)
        self._keys = [
            key,
            key + ".msgs",
            acks,
            fairness_key(namespace, queue_name),
            paused_key(queue_name),
            lanes_key(key),
        ]
        self._script: Any = client.register_script(FETCH)

    def __call__(self, count: int) -> list[bytes | None] | None:
        """Up to ``count`` messages' bodies, highest band first; None while the queue is paused."""
        args = [count, FAIR_EVERY]
        result: list[bytes | None] | None = self._script(keys=self._keys, args=args)
        return result
