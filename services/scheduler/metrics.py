"""The scheduler's Prometheus metrics (prefix ``jobrelay_``), served on ``SCHEDULER_METRICS_BIND``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from services.scheduler.leader import LeaderLease
from shared.metrics import PREFIX

#: Seconds from a tick's scheduled time to its job being published; 100 ms is the target.
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

schedule_fires_total = Counter(
    PREFIX + "schedule_fires_total", "Ticks fired: a job created (or a housekeeping run done).", ("schedule",)
)
schedule_misfires_total = Counter(
    PREFIX + "schedule_misfires_total",
    "Ticks missed beyond their grace time: coalesced into a catch-up run, skipped, or failed to fire.",
    ("schedule", "outcome"),
)
schedule_lag_seconds = Histogram(
    PREFIX + "schedule_lag_seconds",
    "Seconds from a tick's scheduled time to its job being published.",
    ("schedule",),
    buckets=LAG_BUCKETS,
)
schedule_last_fire_timestamp_seconds = Gauge(
    PREFIX + "schedule_last_fire_timestamp_seconds", "Unix time of the last tick fired.", ("schedule",)
)
jobs_relayed_total = Counter(
    PREFIX + "jobs_relayed_total",
    "Jobs the outbox relay published: accepted while Redis was away, or left by an API process that died "
    "before publishing (maintenance.relay).",
)
jobs_republished_total = Counter(
    PREFIX + "jobs_republished_total", "Jobs published again because Redis lost their message (maintenance.reconcile)."
)
jobs_pruned_total = Counter(
    PREFIX + "jobs_pruned_total",
    "Finished jobs deleted past JOB_RETENTION, with their result files and dead letters (maintenance.prune).",
)
jobs_swept_total = Counter(
    PREFIX + "jobs_swept_total",
    "Running jobs nobody held any more (lease long expired, worker dead, message in no queue), ended by their "
    "retry policy (maintenance.sweep).",
    ("outcome",),
)
# NOTE: every outcome's series from 0, so the first sweep shows in rate() and increase().
for _outcome in ("retrying", "failed", "cancelled"):
    jobs_swept_total.labels(_outcome)
scheduler_is_leader = Gauge(PREFIX + "scheduler_is_leader", "1 while this replica holds the leader lease.")


class Collects(Protocol):
    def collect(self) -> Iterable[Metric]: ...


class LeaderOnly(Collector):
    """Expose a collector's series from the leader only, so two replicas never report a queue twice."""

    def __init__(self, collector: Collects, lease: LeaderLease) -> None:
        self.collector = collector
        self.lease = lease

    def describe(self) -> Iterable[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        if not self.lease.is_leader:
            return iter(())
        return iter(self.collector.collect())
