"""Dramatiq's Redis commands as jobrelay runs them: one script per command, every key declared.

Dramatiq's ``dispatch.lua`` takes only its namespace as a key, builds every other
key name inside the script, and writes the global ``dramatiq:__heartbeats__`` on
every call (enqueue and ack included). A Redis Cluster refuses both: a script may
touch only keys of one hash slot, and a client routes it by the keys it declares.
jobrelay runs the commands it uses with the keys of one queue, passed in ``KEYS``
(the band and lane lists of ``shared/broker/bands.py`` are named after the queue's key,
so they share its slot under a hash tag); a worker's heartbeat is written by its own
thread (``services/worker/heartbeat.py``), not by its commands. ``WakingRedisBroker``
uses these and never Dramatiq's script.
"""

from __future__ import annotations

#: KEYS: the ack set, the message hash. ARGV: Redis message ids. Dramatiq's "ack" for many messages
#: of one queue: out of the ack set, then out of the message hash. Returns how many were acked.
ACK = """
local acked = 0
for _, message_id in ipairs(ARGV) do
    if redis.call("srem", KEYS[1], message_id) > 0 then
        redis.call("hdel", KEYS[2], message_id)
        acked = acked + 1
    end
end
return acked
"""

#: KEYS: the delay queue's list, its message hash, the ack set. ARGV: how many at most. Dramatiq's
#: "fetch" of a delay queue: ids off the head of the list into the ack set; returns their bodies
#: (a missing body is nil).
FETCH_DELAYED = """
local ids = redis.call('lrange', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #ids == 0 then return {} end
redis.call('ltrim', KEYS[1], #ids, -1)
redis.call('sadd', KEYS[3], unpack(ids))
return redis.call('hmget', KEYS[2], unpack(ids))
"""
