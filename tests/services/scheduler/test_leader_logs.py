"""A leader change is routine: logged at INFO, not WARNING."""

from __future__ import annotations

import logging

import pytest
import redis

from services.scheduler.leader import LeaderLease


def test_taking_and_losing_the_lease_log_at_info(redis_client: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="services.scheduler.leader")
    first = LeaderLease(redis_client, "replica-a", ttl_s=5, key="test:leader-logs")
    second = LeaderLease(redis_client, "replica-b", ttl_s=5, key="test:leader-logs")

    # When: one replica takes the lease, releases it, and the other takes it
    assert first.refresh()
    first.release()
    assert second.refresh()

    changes = [r for r in caplog.records if "leadership" in r.getMessage()]
    assert [r.levelno for r in changes] == [logging.INFO, logging.INFO]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
