"""A fresh ``Cluster`` per test module: real processes on a private Redis and a SQLite store."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.reliability.cluster import Cluster
from tests.reliability.scenarios import FAST


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A test module may set ``CLUSTER_ENV`` to change the cluster's settings (default: the fast form's)."""
    cluster = Cluster(tmp_path_factory.mktemp("cluster"), env=getattr(request.module, "CLUSTER_ENV", FAST.env))
    try:
        yield cluster.start()
    finally:
        cluster.close()
