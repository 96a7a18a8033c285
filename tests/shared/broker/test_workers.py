"""Worker descriptions in Redis: written at start, read by the console, forgotten with the heartbeat."""

from __future__ import annotations

import os

import redis

from shared.broker.orphans import beat, requeue_worker
from shared.broker.workers import WORKERS, describe_worker, described_workers


def test_a_description_reads_back_and_goes_with_the_worker(redis_client: redis.Redis) -> None:
    # Given a worker process that beat and described itself
    beat(redis_client, "host-0-abc")
    describe_worker(redis_client, "host-0-abc", queues=["webhooks", "default"], processes=3, threads=8)
    info = described_workers(redis_client)["host-0-abc"]
    assert (info.pid, info.queues, info.processes, info.threads) == (os.getpid(), ("default", "webhooks"), 3, 8)
    # When it is recovered (stopped or dead), its description goes with its heartbeat
    requeue_worker(redis_client, "host-0-abc")
    assert described_workers(redis_client) == {}


def test_a_malformed_description_is_left_out(redis_client: redis.Redis) -> None:
    redis_client.hset(WORKERS, "odd-0-x", "not json")
    describe_worker(redis_client, "good-0-y", queues=["default"], processes=1, threads=1)
    assert set(described_workers(redis_client)) == {"good-0-y"}
