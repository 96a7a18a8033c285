"""What is in each queue, read cheaply from Redis (depth, delayed, oldest) and the store (running, dead).

Dramatiq's Redis layout: ``dramatiq:<q>`` is a list of message ids with the
bodies in the hash ``dramatiq:<q>.msgs``; delayed messages sit in
``dramatiq:<q>.DQ``; dead letters in the sorted set ``dramatiq:<q>.XQ``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import redis
from prometheus_client.core import GaugeMetricFamily

from shared.broker.publishing import NAMESPACE
from shared.metrics import PREFIX
from shared.store.jobs import JobStore

# KEYS: XQ zset, XQ hash. ARGV: job ids to drop (none: drop all). Returns how many went.
_DROP_DEAD = """
if #ARGV == 0 then
  local n = redis.call('zcard', KEYS[1])
  redis.call('del', KEYS[1], KEYS[2])
  return n
end
local wanted = {}
for _, id in ipairs(ARGV) do wanted[id] = true end
local n = 0
local entries = redis.call('hgetall', KEYS[2])
for i = 1, #entries, 2 do
  local ok, message = pcall(cjson.decode, entries[i + 1])
  if ok and wanted[message['message_id']] then
    redis.call('zrem', KEYS[1], entries[i])
    redis.call('hdel', KEYS[2], entries[i])
    n = n + 1
  end
end
return n
"""


@dataclass(frozen=True)
class QueueStats:
    name: str
    depth: int
    delayed: int
    in_progress: int
    dead: int
    oldest_age_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def oldest_age_s(client: redis.Redis, queue: str, now_s: float | None = None) -> float:
    """Age of the message at the head of the queue (0 when empty): one LINDEX and one HGET."""
    key = f"{NAMESPACE}:{queue}"
    head = client.lindex(key, 0)
    if head is None:
        return 0.0
    body = client.hget(key + ".msgs", head)
    if body is None:
        return 0.0
    try:
        enqueued_ms = json.loads(body)["message_timestamp"]
    except (ValueError, KeyError, TypeError):
        return 0.0
    return max(0.0, (now_s or time.time()) - enqueued_ms / 1000)


def queue_stats(client: redis.Redis, store: JobStore, queues: list[str]) -> list[QueueStats]:
    counts = store.queue_counts()
    names = sorted(set(queues) | set(counts))
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.llen(f"{NAMESPACE}:{name}")
        pipe.hlen(f"{NAMESPACE}:{name}.DQ.msgs")
    sizes = pipe.execute()
    now_s = time.time()
    stats = []
    for index, name in enumerate(names):
        stats.append(
            QueueStats(
                name=name,
                depth=int(sizes[2 * index]),
                delayed=int(sizes[2 * index + 1]),
                in_progress=counts.get(name, {}).get("running", 0),
                dead=counts.get(name, {}).get("dead", 0),
                oldest_age_s=round(oldest_age_s(client, name, now_s), 3),
            )
        )
    return stats


def drop_dead_letters(client: redis.Redis, queue: str, job_ids: list[str] | None = None) -> int:
    """Remove dead-lettered messages of these jobs (or all) from Redis' dead-letter set."""
    if job_ids is not None and not job_ids:
        return 0
    key = f"{NAMESPACE}:{queue}.XQ"
    script = client.register_script(_DROP_DEAD)
    return int(script(keys=[key, key + ".msgs"], args=job_ids or []))


class QueueGauges:
    """A Prometheus collector: queue depth, delayed, dead and oldest age, read at scrape time.

    Registered by the scheduler (one scrape target, a handful of Redis calls
    per queue), so the numbers are fresh without a refresh loop.
    """

    def __init__(self, client: redis.Redis, store: JobStore, queues: Callable[[], list[str]]) -> None:
        self.client = client
        self.store = store
        self.queues = queues

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = {
            "depth": GaugeMetricFamily(PREFIX + "queue_depth", "Messages waiting in the queue.", labels=["queue"]),
            "delayed": GaugeMetricFamily(
                PREFIX + "queue_delayed", "Delayed messages (eta, retries).", labels=["queue"]
            ),
            "dead": GaugeMetricFamily(PREFIX + "queue_dead", "Jobs in the dead-letter queue.", labels=["queue"]),
            "oldest_age_s": GaugeMetricFamily(
                PREFIX + "queue_oldest_age_seconds", "Age of the oldest waiting message.", labels=["queue"]
            ),
        }
        try:
            stats = queue_stats(self.client, self.store, self.queues())
        except Exception:
            # NOTE: a scrape must not fail because Redis or the store is briefly away; the series just go stale.
            return iter(())
        for item in stats:
            for field, family in families.items():
                family.add_metric([item.name], float(getattr(item, field)))
        return iter(families.values())
