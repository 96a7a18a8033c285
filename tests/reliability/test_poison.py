"""Fast form of scenarios 5 and 6: poison messages, a task hung in C code, result storage full."""

from __future__ import annotations

from tests.reliability.cluster import Cluster
from tests.reliability.poison import poison, stuck_tasks
from tests.reliability.scenarios import FAST


def test_poison_messages_are_dead_lettered_and_the_worker_is_unharmed(cluster: Cluster) -> None:
    report = poison(cluster, FAST)
    print(report.summary())
    assert report.violations == [], report.summary()
    assert report.lost == 0 and report.duplicates == 0


def test_a_hung_task_and_a_full_result_store_end_failed_and_harm_nothing_else(cluster: Cluster) -> None:
    report = stuck_tasks(cluster, FAST)
    print(report.summary())
    assert report.violations == [], report.summary()
    assert report.lost == 0 and report.duplicates == 0
