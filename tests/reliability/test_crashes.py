"""Fast form of scenarios 1 and 2: worker processes killed, the worker rolled, the scheduler leader killed."""

from __future__ import annotations

from tests.reliability.cluster import Cluster
from tests.reliability.scenarios import FAST, restarts, worker_kills


def test_kill_9_of_worker_processes_loses_and_repeats_nothing(cluster: Cluster) -> None:
    report = worker_kills(cluster, FAST)
    print(report.summary())
    assert report.violations == [], report.summary()
    assert report.lost == 0 and report.duplicates == 0 and report.accepted == FAST.jobs
    assert len(report.faults) == FAST.kills
    # Messages of a killed process go back at once, even while another slot waits out its crash-loop pause.
    assert report.recovery_s is not None and report.recovery_s < 5


def test_rolling_restart_and_leader_kills_lose_and_repeat_nothing(cluster: Cluster) -> None:
    report = restarts(cluster, FAST)
    print(report.summary())
    assert report.violations == [], report.summary()
    assert report.lost == 0 and report.duplicates == 0
