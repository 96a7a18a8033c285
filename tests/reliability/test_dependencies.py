"""Fast form of scenarios 3 and 4: Redis restarted and away, the SQL store locked, under load."""

from __future__ import annotations

from tests.reliability.cluster import Cluster
from tests.reliability.scenarios import FAST, redis_faults, store_lock

# NOTE: workers count as dead only after 10 s (the default), longer than the outages here, so the orphan
# requeue cannot paper over messages a live worker failed to recover by itself.
CLUSTER_ENV = {**FAST.env, "WORKER_DEAD_AFTER_S": "10"}


def test_redis_restarted_and_unreachable_loses_nothing(cluster: Cluster) -> None:
    report = redis_faults(cluster, FAST)
    print(report.summary())
    assert report.violations == [], report.summary()
    assert report.lost == 0 and report.duplicates == 0 and report.accepted == FAST.jobs
    assert set(report.answers) <= {"202", "200", "503", "no answer"}


def test_sqlite_store_locked_pauses_everything_and_loses_nothing(cluster: Cluster) -> None:
    report = store_lock(cluster, FAST)
    print(report.summary())
    assert report.violations == [], report.summary()
    assert report.lost == 0 and report.duplicates == 0 and report.accepted == FAST.jobs
    assert set(report.answers) <= {"202", "200", "503", "no answer"}
