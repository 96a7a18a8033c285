"""The supervisor's pulse for its children: beats, leases and cancel requests, on a real Redis and the store's twin."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import redis

from services.worker.held_jobs import HeldJobs, held_jobs_path
from services.worker.pulse import ChildPulse, LiveChild
from shared.broker.orphans import HEARTBEATS, beat
from shared.clock import FakeClock
from shared.job import Job
from shared.store.memory import MemoryJobStore
from tests.shared.store.test_jobs import make_job

OWNER = "host-0-live"


def claimed(store: MemoryJobStore) -> Job:
    job = make_job()
    store.insert([job])
    claim = store.claim(job.id, owner=OWNER, lease_s=30)
    assert claim.job is not None
    return claim.job


def inside(held: HeldJobs, job: Job) -> Callable[[], None]:
    """A thread enters ``job`` and stays inside it until the returned call, which makes it leave."""
    release: queue.Queue[None] = queue.Queue()
    entered = threading.Event()

    def run() -> None:
        held.enter(job)
        entered.set()
        release.get(timeout=30)
        held.leave()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert entered.wait(10)

    def leave() -> None:
        release.put(None)
        thread.join(timeout=10)

    return leave


def pulse_for(redis_client: redis.Redis, store: MemoryJobStore, tmp_path: Path) -> ChildPulse:
    pulse = ChildPulse(redis_client, store, heartbeat_s=1.0, lease_s=30.0)
    pulse.watch(LiveChild(OWNER, held_jobs_path(tmp_path, OWNER)))
    return pulse


def test_it_beats_for_a_live_child_and_never_for_one_recovered(redis_client: redis.Redis, tmp_path: Path) -> None:
    pulse = pulse_for(redis_client, MemoryJobStore(), tmp_path)
    # Given a child that beat once, at its start, long ago (its task holds its GIL since)
    redis_client.zadd(HEARTBEATS, {OWNER: 1000})
    # When the supervisor beats
    pulse.beat()
    # Then its beat is fresh
    score = redis_client.zscore(HEARTBEATS, OWNER)
    assert score is not None and score > (time.time() - 5) * 1000
    # And once recovered (its beat removed), a late beat does not bring it back
    redis_client.zrem(HEARTBEATS, OWNER)
    pulse.beat()
    assert redis_client.zscore(HEARTBEATS, OWNER) is None
    # Nor does a child forgotten at its death
    beat(redis_client, OWNER)
    redis_client.zadd(HEARTBEATS, {OWNER: 1000})
    pulse.forget(OWNER)
    pulse.beat()
    assert redis_client.zscore(HEARTBEATS, OWNER) == 1000


def test_it_renews_the_leases_of_the_jobs_a_child_holds(redis_client: redis.Redis, tmp_path: Path) -> None:
    clock = FakeClock()
    store = MemoryJobStore(clock)
    pulse = pulse_for(redis_client, store, tmp_path)
    held = HeldJobs(held_jobs_path(tmp_path, OWNER))
    running, ahead, other = claimed(store), claimed(store), claimed(store)
    held.ahead([ahead.id])
    release = inside(held, running)
    # When time passes and the supervisor renews
    clock.advance(20)
    pulse.renew_leases()
    # Then the running job's and the claim ahead's leases run from now; the job it does not hold, not
    for job in (running, ahead):
        assert store.get(job.id).lease_expires_at == clock.now() + timedelta(seconds=30)
    assert store.get(other.id).lease_expires_at == other.lease_expires_at
    release()


def test_it_sees_cancel_requests_once_each_and_forgets_them_when_they_end(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    store = MemoryJobStore()
    pulse = pulse_for(redis_client, store, tmp_path)
    held = HeldJobs(held_jobs_path(tmp_path, OWNER))
    job, beside = claimed(store), claimed(store)
    release = inside(held, job)
    release_beside = inside(held, beside)
    pulse.check_cancels()
    assert pulse.cancels_seen() == {}
    # When an operator cancels one of them
    store.cancel(job.id)
    pulse.check_cancels()
    # Then the pulse saw it, at the first poll that found it
    seen = pulse.cancels_seen()
    assert list(seen) == [job.id]
    pulse.check_cancels()
    assert pulse.cancels_seen() == seen
    # And once its thread left it, it is forgotten
    release()
    pulse.check_cancels()
    assert pulse.cancels_seen() == {}
    release_beside()
