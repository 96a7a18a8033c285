"""What is in each queue, read cheaply from Redis (depth, delayed, oldest) and the store (running, dead).

Dramatiq's Redis layout: ``dramatiq:<q>`` is a list of message ids with the
bodies in the hash ``dramatiq:<q>.msgs``; delayed messages sit in
``dramatiq:<q>.DQ``; dead letters by job id in ``dramatiq:<q>.dead`` (``dead_letters.py``). A queue's
waiting messages are in one list per priority band (``shared/broker/bands.py``):
its depth counts them all, and its oldest is the oldest head of any band (of any
tenant's lane too).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import redis
from prometheus_client.core import GaugeMetricFamily

from shared.broker import dead_letters
from shared.broker.bands import paused_key, waiting_keys
from shared.broker.publishing import NAMESPACE
from shared.metrics import PREFIX
from shared.store.jobs import JobStore


@dataclass(frozen=True)
class QueueStats:
    name: str
    depth: int
    delayed: int
    in_progress: int
    dead: int
    oldest_age_s: float
    #: As mirrored in Redis from the store (``shared/store/pauses.py``).
    paused: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def oldest_age_s(client: redis.Redis, queue: str, now_s: float | None = None) -> float:
    """Age of the oldest message at the head of a band of the queue (0 when empty): one LINDEX per band of
    each lane, one HMGET."""
    key = f"{NAMESPACE}:{queue}"
    pipe = client.pipeline(transaction=False)
    for band in waiting_keys(client, key):
        pipe.lindex(band, 0)
    heads = [head for head in pipe.execute() if head is not None]
    if not heads:
        return 0.0
    oldest_ms: float | None = None
    for body in client.hmget(key + ".msgs", heads):
        try:
            enqueued_ms = float(json.loads(body)["message_timestamp"])  # type: ignore[arg-type]
        except (ValueError, KeyError, TypeError):
            continue
        oldest_ms = enqueued_ms if oldest_ms is None else min(oldest_ms, enqueued_ms)
    if oldest_ms is None:
        return 0.0
    return max(0.0, (now_s or time.time()) - oldest_ms / 1000)


def queue_stats(client: redis.Redis, store: JobStore, queues: list[str]) -> list[QueueStats]:
    counts = store.queue_counts()
    names = sorted(set(queues) | set(counts))
    lists = {name: waiting_keys(client, f"{NAMESPACE}:{name}") for name in names}
    pipe = client.pipeline(transaction=False)
    for name in names:
        for band in lists[name]:
            pipe.llen(band)
        pipe.hlen(f"{NAMESPACE}:{name}.DQ.msgs")
        pipe.exists(paused_key(name))
    sizes = iter(pipe.execute())
    now_s = time.time()
    stats = []
    for name in names:
        depth = sum(int(next(sizes)) for _ in lists[name])
        delayed, paused = int(next(sizes)), next(sizes)
        stats.append(
            QueueStats(
                name=name,
                depth=depth,
                delayed=delayed,
                in_progress=counts.get(name, {}).get("running", 0),
                dead=counts.get(name, {}).get("dead", 0),
                oldest_age_s=round(oldest_age_s(client, name, now_s), 3),
                paused=bool(paused),
            )
        )
    return stats


def drop_dead_letters(client: redis.Redis, queue: str, job_ids: list[str] | None = None) -> int:
    """Remove the dead letters of these jobs (or all the queue's) from Redis (``shared/broker/dead_letters.py``)."""
    return dead_letters.drop_dead_letters(client, NAMESPACE, queue, job_ids)


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
            "paused": GaugeMetricFamily(
                PREFIX + "queue_paused",
                "1 while the queue is paused (no worker starts its jobs), else 0.",
                labels=["queue"],
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
