"""Redis behind Sentinel: the primary killed under submit load, the replica promoted, nothing accepted lost.

Every service connects with ``REDIS_URL=redis+sentinel://...`` to a group of a
primary, a replica and three Sentinels started here on loopback. The primary
gets SIGKILL while clients submit (with retries running from the delay queue);
the Sentinels promote the replica after ``down-after-milliseconds`` (1 s here).
Replication is asynchronous, so the writes of the primary's last moments may be
gone from the new primary: the reconcile pass publishes again the messages of
accepted jobs that were lost (after a minute), and the claims keep a message
that survived twice from running twice.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from tests.reliability.audit import Report, audit
from tests.reliability.cluster import Cluster
from tests.reliability.load import Load
from tests.reliability.scenarios import FAST, drained_after, prefix, sleep_until
from tests.sentinel import SentinelGroup

#: The messages Redis lost come back by the reconcile pass: unseen twice, 30 s apart, a minute old.
SETTLE_S = 240.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("sentinel-cluster"), env=FAST.env, sentinels=True)
    try:
        yield cluster.start()
    finally:
        cluster.close()


@pytest.mark.timeout(600)
def test_primary_killed_under_submit_load_loses_no_accepted_job(cluster: Cluster) -> None:
    group = cluster.redis
    assert isinstance(group, SentinelGroup)
    report = Report("Redis primary killed (SIGKILL), Sentinel promotes the replica")
    # Given: clients submitting for about 8 s, some jobs failing their first attempt so that
    # their retries wait in the delay queue when the primary goes.
    load = Load(
        cluster,
        prefix=prefix("sentinel"),
        count=FAST.jobs,
        work_ms=FAST.work_ms,
        rate_per_s=FAST.jobs / 8.0,
        fail_every=max(5, FAST.jobs // 60),
        retry_after_s=2.0,
    ).start()
    sleep_until(load.started + 2.0)

    # When: the primary dies outright, mid-load.
    old = group.primary()
    assert old.process is not None
    os.kill(old.process.pid, signal.SIGKILL)
    old.process.wait(timeout=10)
    killed_at = time.monotonic()
    new_port = group.wait_failover(old.port, timeout_s=60)
    report.fault(f"SIGKILL the primary; the Sentinels promoted port {new_port} in {time.monotonic() - killed_at:.1f}s")
    back = time.time()
    load.join()

    # Then: every job accepted completed, once, and Redis holds nothing of them afterwards.
    report.submitted, report.accepted = len(load.submissions), len(load.accepted())
    report.answers = load.answers()
    report.violations.extend(load.violations())
    accepted = [s.job_id for s in load.accepted() if s.job_id]
    rows, _ = audit(cluster, report, accepted, settle_timeout_s=SETTLE_S)
    accepted_before = [s.job_id for s in load.submissions if s.job_id and s.accepted_at and s.accepted_at < back]
    report.recovery_s = drained_after(rows, accepted_before, back)
    print(report.summary())
    assert report.violations == [], report.summary()
    assert report.lost == 0 and report.duplicates == 0 and report.accepted == FAST.jobs
    assert set(report.answers) <= {"202", "200", "503", "no answer"}
