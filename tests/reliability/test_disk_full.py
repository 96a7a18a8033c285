"""Fast form of scenario 9: DATA_DIR's disk full for a few seconds under load."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.disk import CannotMount
from tests.reliability.cluster import Cluster
from tests.reliability.disk_full import disk_full, disk_size
from tests.reliability.scenarios import FAST


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The fast form's cluster, with DATA_DIR on a 2 MB tmpfs of its own."""
    cluster = Cluster(tmp_path_factory.mktemp("cluster"), env=FAST.env, data_disk=disk_size(FAST))
    try:
        try:
            cluster.start()
        except CannotMount as exc:
            pytest.skip(str(exc))
        yield cluster
    finally:
        cluster.close()


def test_a_full_disk_kills_nothing_answers_503_and_loses_or_repeats_nothing(cluster: Cluster) -> None:
    report = disk_full(cluster, FAST)
    print(report.summary())
    assert report.violations == [], report.summary()
    assert report.lost == 0 and report.duplicates == 0 and report.accepted == FAST.jobs
    assert set(report.answers) <= {"202", "200", "503"}
