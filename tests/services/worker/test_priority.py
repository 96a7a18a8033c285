"""Priorities and paused queues in a real worker on a real Redis: the order jobs start in, delayed and
retried messages in their band, a crashed worker's messages back in their bands, and pausing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis

import tests.services.worker.tasks_for_tests  # noqa: F401 - registers the testing.* tasks
from services.worker.consumer import PAUSE_CHECK_S
from shared.broker.bands import band_key, resume_key
from shared.broker.orphans import requeue_worker
from shared.broker.pausing import mirror_pause, mirror_resume
from shared.broker.publishing import build_broker
from shared.broker.waking import WAKE_TOKENS
from shared.catalog import Catalog
from shared.job import JobStatus
from shared.settings import Settings
from shared.store.jobs import JobStore
from shared.store.pauses import QueuePauses
from shared.store.tasks import TaskRegistry
from tests.services.worker.conftest import Harness, running_harness, worker_broker

ROOT = Path(__file__).resolve().parents[3]


def wait_until(condition: Callable[[], bool], timeout_s: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} not met within {timeout_s}s"
        time.sleep(0.02)


@pytest.fixture
def one_thread(
    worker_settings: Settings, catalog: Catalog, store: JobStore, registry: TaskRegistry
) -> Iterator[Harness]:
    with running_harness(worker_settings, catalog, store, registry, threads=1) as harness:
        yield harness


def pause(store: JobStore, client: redis.Redis, queue: str) -> None:
    """As the API does: the store, then the Redis mirror."""
    QueuePauses(store.engine).pause(queue, paused_by="tests")
    mirror_pause(client, queue)


def resume(store: JobStore, client: redis.Redis, queue: str) -> None:
    QueuePauses(store.engine).resume(queue)
    mirror_resume(client, queue)


def test_a_priority_9_job_submitted_after_six_of_priority_0_runs_first(
    one_thread: Harness, store: JobStore, redis_client: redis.Redis
) -> None:
    # Given a worker with one thread, and its queue paused while the jobs arrive
    pause(store, redis_client, "default")
    low = [one_thread.submit({"task": "diagnostics.echo", "args": {"message": str(i)}}) for i in range(6)]
    high = one_thread.submit({"task": "diagnostics.echo", "args": {"message": "high"}, "priority": 9})
    assert high.priority == 9 and low[0].priority == 0
    # Then nothing of the paused queue starts, while another queue's job runs
    other = one_thread.submit({"task": "testing.block", "args": {"seconds": 0.01}})
    assert one_thread.wait(other.id).status is JobStatus.SUCCEEDED
    time.sleep(2 * PAUSE_CHECK_S)
    assert {store.get(job.id).status for job in [*low, high]} == {JobStatus.QUEUED}
    # When the queue is resumed
    resume(store, redis_client, "default")
    done = [one_thread.wait(job.id) for job in [high, *low]]
    # Then the priority 9 job started before every priority 0 one, and those in their order
    started = [job.started_at.timestamp() if job.started_at else float("nan") for job in done]
    assert started[0] < min(started[1:])
    assert started[1:] == sorted(started[1:])


def test_a_delayed_job_and_a_retry_wait_in_their_band(
    harness: Harness, store: JobStore, redis_client: redis.Redis
) -> None:
    # Given a job that asks to run again in 0.5 s, seen retrying, and its queue then paused
    retried = harness.submit({"task": "testing.retry_later", "args": {"after_s": 0.5}, "priority": 6})
    harness.wait(retried.id, until=lambda job: job.status is JobStatus.RETRYING)
    pause(store, redis_client, "default")
    # and a delayed job of priority 7
    delayed = harness.submit({"task": "diagnostics.echo", "args": {"message": "later"}, "priority": 7, "delay_s": 0.3})
    # When both are due (the worker moves them from the delay queue)
    # Then each waits in its band's list, not priority 0's
    p6, p7 = band_key("dramatiq:default", 6), band_key("dramatiq:default", 7)
    wait_until(lambda: redis_client.llen(p6) == 1 and redis_client.llen(p7) == 1, what="both in their bands")
    assert redis_client.llen("dramatiq:default") == 0
    resume(store, redis_client, "default")
    assert harness.wait(delayed.id).status is JobStatus.SUCCEEDED


CRASHING_FETCHER = """
import sys, time
from tests.services.worker.conftest import worker_broker
broker = worker_broker(sys.argv[1], "doomed-worker")
got = broker.fetch_banded("default", 100)
print(len(got), flush=True)
time.sleep(60)
"""


def test_a_killed_workers_messages_go_back_to_their_own_bands(redis_url: str, redis_client: redis.Redis) -> None:
    # Given one message of every priority, all fetched by a worker process
    publisher = build_broker(redis_url)
    sent = {p: publisher.enqueue(dramatiq.Message("default", "a.b", (), {}, {"priority": p})) for p in range(10)}
    child = subprocess.Popen(
        [sys.executable, "-c", CRASHING_FETCHER, redis_url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "10"
        assert redis_client.scard("dramatiq:__acks__.doomed-worker.default") == 10
        # When it is killed with SIGKILL and recovered
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
    assert requeue_worker(redis_client, "doomed-worker") == 10
    # Then each message is back in the list of its own band
    for priority, message in sent.items():
        ids = redis_client.lrange(band_key("dramatiq:default", priority), 0, -1)
        assert ids == [message.options["redis_message_id"].encode()], priority
    # and a new worker fetches them highest first
    fetched = worker_broker(redis_url, "next-worker").fetch_banded("default", 20) or []
    order = [dramatiq.Message.decode(body).options.get("priority", 0) for body in fetched if body is not None]
    assert order == list(reversed(range(10)))


class HoldAll:
    """Claims that let nothing out: the consumer keeps what it fetched (as when every thread is busy)."""

    def __init__(self) -> None:
        self.given_back: list[str] = []

    def ready(self, candidates: Sequence[dramatiq.Message[Any] | None]) -> int:
        return 0

    def wait(self, timeout_s: float) -> None:
        time.sleep(min(timeout_s, 0.01))

    def give_back(self, redis_message_ids: Sequence[str]) -> None:
        self.given_back.extend(redis_message_ids)


def test_a_consumer_gives_back_what_it_fetched_when_its_queue_is_paused(
    redis_url: str, redis_client: redis.Redis
) -> None:
    publisher = build_broker(redis_url)
    sent = [publisher.enqueue(dramatiq.Message("default", "a.b", (), {"n": i}, {})) for i in range(3)]
    claims = HoldAll()
    consumer = worker_broker(redis_url, "holder", claims=claims).consume("default", prefetch=8, timeout=100)
    # Given a consumer holding three fetched messages it could not hand out yet
    assert next(consumer) is None and len(consumer.message_cache) == 3
    # When the queue is paused
    mirror_pause(redis_client, "default")
    deadline = time.monotonic() + 5 * PAUSE_CHECK_S
    while consumer.message_cache:
        assert time.monotonic() < deadline, "the fetched messages were never given back"
        assert next(consumer) is None
    # Then they are back at the front of the queue, in order, their claims given back, none in the ack set
    assert redis_client.lrange("dramatiq:default", 0, -1) == [m.options["redis_message_id"].encode() for m in sent]
    assert sorted(claims.given_back) == sorted(m.options["redis_message_id"] for m in sent)
    assert redis_client.scard("dramatiq:__acks__.holder.default") == 0
    # and a paused consumer waits on the resume key, woken by the resume's token
    results: list[object] = []
    waiting = threading.Thread(target=lambda: results.append(next(consumer)))
    waiting.start()
    wait_until(lambda: any(c.get("cmd") == "blpop" for c in redis_client.client_list()), what="blocked")
    assert redis_client.llen("dramatiq:default") == 3
    mirror_resume(redis_client, "default")
    waiting.join(timeout=10)
    assert not waiting.is_alive() and results == [None]
    assert redis_client.llen(resume_key("default")) == WAKE_TOKENS - 1
    # and the next call fetches again
    assert next(consumer) is None and len(consumer.message_cache) == 3
