"""Deterministic crash recovery: put the messages of dead workers back at the front of their queues.

Dramatiq's own recovery runs at random (one command in a thousand) and can
take hours on an idle queue. Here a worker is dead when its heartbeat in
``dramatiq:__heartbeats__`` is older than ``dead_after_s``; live workers
beat every couple of seconds from a thread of their own, whatever their
tasks are doing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import redis

from shared.broker.publishing import NAMESPACE
from shared.broker.waking import WAKE_TOKENS, is_delay_queue, wake_key
from shared.store.jobs import JobStore

log = logging.getLogger(__name__)

HEARTBEATS = f"{NAMESPACE}:__heartbeats__"

# KEYS: the ack set, the queue list, the queue's message hash, its wake-up list.
# ARGV: how many wake tokens to keep at most. Returns how many messages went back.
_REQUEUE = """
local ids = redis.call('smembers', KEYS[1])
local n = 0
for _, id in ipairs(ids) do
  if redis.call('hexists', KEYS[3], id) == 1 then
    redis.call('lpush', KEYS[2], id)
    n = n + 1
  end
end
redis.call('del', KEYS[1])
if n > 0 and KEYS[4] ~= '' then
  redis.call('lpush', KEYS[4], 1)
  redis.call('ltrim', KEYS[4], 0, tonumber(ARGV[1]) - 1)
end
return n
"""


def beat(client: redis.Redis, worker_id: str) -> None:
    client.zadd(HEARTBEATS, {worker_id: int(time.time() * 1000)})


def dead_workers(client: redis.Redis, *, dead_after_s: float) -> list[str]:
    cutoff = int((time.time() - dead_after_s) * 1000)
    members: list[bytes] = client.zrangebyscore(HEARTBEATS, 0, cutoff)  # type: ignore[assignment]
    return [member.decode() for member in members]


def requeue_worker(client: redis.Redis, worker_id: str) -> int:
    """Move one worker's fetched-but-unacked messages back; returns how many."""
    script = client.register_script(_REQUEUE)
    prefix = f"{NAMESPACE}:__acks__.{worker_id}."
    moved = 0
    for key in client.scan_iter(match=prefix + "*", count=500):
        queue = key.decode()[len(prefix) :]
        queue_key = f"{NAMESPACE}:{queue}"
        wake = "" if is_delay_queue(queue) else wake_key(queue)
        moved += int(script(keys=[key, queue_key, queue_key + ".msgs", wake], args=[WAKE_TOKENS]))
    client.zrem(HEARTBEATS, worker_id)
    if moved:
        log.warning("requeued %d message(s) of dead worker %s", moved, worker_id)
    return moved


def requeue_orphans(
    client: redis.Redis, store: JobStore, *, dead_after_s: float, workers: Iterable[str] | None = None
) -> int:
    """Recover every dead worker (or the ones named): release their job leases, requeue their messages."""
    dead = list(workers) if workers is not None else dead_workers(client, dead_after_s=dead_after_s)
    if not dead:
        return 0
    # Leases first: a redelivered message must find its job claimable.
    store.release_leases_of(dead)
    return sum(requeue_worker(client, worker_id) for worker_id in dead)
