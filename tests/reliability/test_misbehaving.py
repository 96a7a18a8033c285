"""Fast form of the misbehaving-tasks scenario: every way a task can misbehave, and the jobs beside it."""

from __future__ import annotations

import pytest

from tests.reliability.cluster import Cluster
from tests.reliability.misbehaving import TASK_MODULES, misbehaving_tasks
from tests.reliability.scenarios import FAST

pytestmark = pytest.mark.timeout(300)

CLUSTER_ENV = {**FAST.env, "TASK_MODULES": TASK_MODULES}


def test_misbehaving_tasks_end_as_documented_and_harm_no_other_job(cluster: Cluster) -> None:
    report = misbehaving_tasks(cluster, FAST)
    print(report.summary())
    assert report.violations == [], report.summary()
    assert report.lost == 0 and report.duplicates == 0
