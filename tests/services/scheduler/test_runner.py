"""The leader's runner in-process, on a real Redis and store, with a fake clock that moves only when told."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest
import redis
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import REGISTRY
from sqlalchemy import Engine

from services.scheduler.leader import LeaderLease
from services.scheduler.runner import CATCH_UP_SUFFIX, Runner
from services.scheduler.ticks import tick_job_id
from shared.broker.publishing import build_broker
from shared.clock import FakeClock
from shared.job import utcnow
from shared.store.jobs import JobFilter, JobStore
from shared.store.schedules import Misfire, Schedule, ScheduleSource, ScheduleStore
from shared.store.tasks import TaskRegistry
from shared.submission.submitter import Submitter

NOON = datetime(2024, 6, 1, 12, tzinfo=UTC)


@dataclass
class Replica:
    runner: Runner
    lease: LeaderLease
    clock: FakeClock
    calls: list[str] = field(default_factory=list)


@pytest.fixture
def replicas(
    engine: Engine, registry: TaskRegistry, redis_url: str, redis_client: redis.Redis
) -> Iterator[list[Replica]]:
    """Two replicas that both believe they lead (separate lease keys): the overlap of a failover."""
    made: list[Replica] = []
    for index in range(2):
        broker = build_broker(redis_url)
        lease = LeaderLease(redis_client, f"replica-{index}", ttl_s=5, key=f"test:leader:{index}")
        assert lease.refresh()
        clock = FakeClock(NOON)
        replica = Replica(runner=None, lease=lease, clock=clock)  # type: ignore[arg-type]
        replica.runner = Runner(
            scheduler=BackgroundScheduler(timezone="UTC"),
            schedules=ScheduleStore(engine),
            submitter=Submitter(JobStore(engine), registry, broker),
            lease=lease,
            housekeeping={"maintenance.relay": lambda r=replica: r.calls.append("relay")},
            clock=clock,
        )
        # NOTE: started paused: jobs land in APScheduler's job store (and replace each other) but never run.
        replica.runner.scheduler.start(paused=True)
        made.append(replica)
    yield made
    for replica in made:
        replica.runner.scheduler.shutdown(wait=False)


def every_second(**overrides: object) -> Schedule:
    values: dict[str, object] = {
        "id": "tick",
        "task": "diagnostics.echo",
        "args": {"message": "tick"},
        "cron": None,
        "interval_s": 1,
        "next_run_at": NOON,
        "misfire_grace_s": 5.0,
    }
    values.update(overrides)
    return Schedule(**values)  # type: ignore[arg-type]


def jobs_of(engine: Engine, schedule_id: str) -> list[str]:
    return sorted(job.id for job in JobStore(engine).page(JobFilter(schedule_id=schedule_id), limit=500).items)


def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Whether ``check`` holds within ``timeout_s`` (for what a background thread of the Submitter writes)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_fire_inserts_and_publishes_the_tick_job_and_records_the_run(
    engine: Engine, replicas: list[Replica], redis_client: redis.Redis
) -> None:
    schedules = ScheduleStore(engine)
    schedules.create(every_second())
    fires_before = sample("jobrelay_schedule_fires_total", schedule="tick")
    submitted_before = sample("jobrelay_jobs_submitted_total", task="diagnostics.echo", queue="default")
    replica = replicas[0]
    replica.clock.advance(0.003)
    replica.runner.fire("tick")
    job = JobStore(engine).get(tick_job_id("tick", NOON))
    assert job.schedule_id == "tick" and job.task == "diagnostics.echo" and job.args == {"message": "tick"}
    assert job.queue == "default" and job.published_at is not None
    [message] = [json.loads(v) for v in redis_client.hgetall("dramatiq:default.msgs").values()]
    assert message["message_id"] == job.id
    stored = schedules.get("tick")
    assert stored.last_run_at == NOON and stored.next_run_at == NOON + timedelta(seconds=1)
    assert sample("jobrelay_schedule_fires_total", schedule="tick") == fires_before + 1
    # And it went through the Submitter: its outbox entry goes once the job is in Redis, and it is no API submission
    assert eventually(lambda: JobStore(engine).outbox_left(older_than=utcnow() + timedelta(seconds=1)) == [])
    assert sample("jobrelay_jobs_submitted_total", task="diagnostics.echo", queue="default") == submitted_before
    assert sample("jobrelay_schedule_last_fire_timestamp_seconds", schedule="tick") == NOON.timestamp()


def test_a_namespaced_schedule_fires_jobs_of_its_namespace(engine: Engine, replicas: list[Replica]) -> None:
    ScheduleStore(engine).create(every_second(id="acme:tick", namespace="acme"))
    replicas[0].runner.fire("acme:tick")
    job = JobStore(engine).get(tick_job_id("acme:tick", NOON))
    assert (job.namespace, job.schedule_id) == ("acme", "acme:tick")


def test_two_overlapping_leaders_fire_each_tick_once(engine: Engine, replicas: list[Replica]) -> None:
    schedules = ScheduleStore(engine)
    schedules.create(every_second())
    # Both wake up for 12:00:00 and 12:00:01 (the second one a little later, from stale state).
    for replica in replicas:
        replica.clock.advance(1.010)
    replicas[0].runner.fire("tick")
    # The second replica woke from the state before the first recorded its run: put that state back.
    current = schedules.get("tick")
    assert current.next_run_at == NOON + timedelta(seconds=2)
    schedules.replace(replace(current, next_run_at=NOON), expected_version=current.version)
    replicas[1].runner.fire("tick")
    assert jobs_of(engine, "tick") == sorted(tick_job_id("tick", NOON + timedelta(seconds=s)) for s in (0, 1))


def test_a_new_leader_catches_up_missed_ticks_by_policy(engine: Engine, replicas: list[Replica]) -> None:
    schedules = ScheduleStore(engine)
    schedules.create(every_second(id="coalesced", misfire=Misfire.COALESCE))
    schedules.create(every_second(id="skipped", misfire=Misfire.SKIP))
    missed_before = sample("jobrelay_schedule_misfires_total", schedule="skipped", outcome="skipped")
    # Given nobody fired from 12:00:00 to 12:00:20.5, with a grace time of 5 s
    replica = replicas[0]
    replica.clock.advance(20.5)
    replica.runner.fire("coalesced")
    replica.runner.fire("skipped")
    # Then 12:00:16 .. 12:00:20 run normally; 12:00:00 .. 12:00:15 became one catch-up run for 12:00:15, or nothing
    on_time = [tick_job_id("coalesced", NOON + timedelta(seconds=s)) for s in range(16, 21)]
    assert jobs_of(engine, "coalesced") == sorted([tick_job_id("coalesced", NOON + timedelta(seconds=15)), *on_time])
    assert jobs_of(engine, "skipped") == sorted(
        tick_job_id("skipped", NOON + timedelta(seconds=s)) for s in range(16, 21)
    )
    assert sample("jobrelay_schedule_misfires_total", schedule="skipped", outcome="skipped") == missed_before + 16
    assert schedules.get("skipped").next_run_at == NOON + timedelta(seconds=21)


def test_nothing_fires_without_the_lease_or_for_a_disabled_schedule(engine: Engine, replicas: list[Replica]) -> None:
    schedules = ScheduleStore(engine)
    schedules.create(every_second())
    schedules.create(every_second(id="off", enabled=False))
    replica = replicas[0]
    replica.lease.release()
    replica.runner.fire("tick")
    assert jobs_of(engine, "tick") == []
    assert replica.lease.refresh()
    replica.runner.fire("off")
    assert jobs_of(engine, "off") == []


def test_a_tick_of_an_unregistered_task_is_counted_and_the_schedule_moves_on(
    engine: Engine, replicas: list[Replica]
) -> None:
    schedules = ScheduleStore(engine)
    schedules.create(every_second(task="gone.away"))
    before = sample("jobrelay_schedule_misfires_total", schedule="tick", outcome="error")
    replicas[0].runner.fire("tick")
    assert jobs_of(engine, "tick") == []
    assert sample("jobrelay_schedule_misfires_total", schedule="tick", outcome="error") == before + 1
    stored = schedules.get("tick")
    assert stored.next_run_at == NOON + timedelta(seconds=1) and stored.last_run_at is None


def test_builtin_schedules_run_their_function_once_per_wake_up(engine: Engine, replicas: list[Replica]) -> None:
    schedules = ScheduleStore(engine)
    relay = every_second(id="maintenance.relay", task="maintenance.relay", args={}, source=ScheduleSource.BUILTIN)
    schedules.sync(ScheduleSource.BUILTIN, [relay])
    replica = replicas[0]
    replica.clock.advance(3)
    replica.runner.fire("maintenance.relay")
    assert replica.calls == ["relay"]
    assert schedules.get("maintenance.relay").last_run_at == NOON + timedelta(seconds=3)
    assert jobs_of(engine, "maintenance.relay") == []


def test_sync_loads_changes_and_unloads(engine: Engine, replicas: list[Replica]) -> None:
    schedules = ScheduleStore(engine)
    runner = replicas[0].runner
    schedules.create(every_second(next_run_at=NOON + timedelta(seconds=10)))
    runner.sync()
    assert runner.scheduler.get_job("tick") is not None
    assert runner.scheduler.get_job("tick" + CATCH_UP_SUFFIX) is None
    # Given the schedule changes while ticks are overdue
    replicas[0].clock.advance(20)
    current = schedules.get("tick")
    schedules.replace(replace(current, interval_s=5), expected_version=current.version)
    runner.sync()
    # Then it is reloaded with a catch-up wake-up
    assert str(runner.scheduler.get_job("tick").trigger) == "interval[0:00:05]"
    assert runner.scheduler.get_job("tick" + CATCH_UP_SUFFIX) is not None
    # And disabling unloads it
    current = schedules.get("tick")
    schedules.replace(replace(current, enabled=False), expected_version=current.version)
    runner.sync()
    assert runner.scheduler.get_jobs() == []


def test_housekeeping_rows_record_their_runs_at_most_every_ten_seconds(engine: Engine, replicas: list[Replica]) -> None:
    schedules = ScheduleStore(engine)
    relay = every_second(id="maintenance.relay", task="maintenance.relay", args={}, source=ScheduleSource.BUILTIN)
    schedules.sync(ScheduleSource.BUILTIN, [relay])
    replica = replicas[0]
    # Given the relay ran at 12:00:00, which its row records
    replica.runner.fire("maintenance.relay")
    assert schedules.get("maintenance.relay").last_run_at == NOON
    # When it wakes up every second for nine more seconds
    for _ in range(9):
        replica.clock.advance(1)
        replica.runner.fire("maintenance.relay")
    # Then it runs each time, but its row is not written again (that write would queue behind the job inserts)
    assert replica.calls == ["relay"] * 10
    assert schedules.get("maintenance.relay").last_run_at == NOON
    # And ten seconds after the last record, the next run is recorded
    replica.clock.advance(1)
    replica.runner.fire("maintenance.relay")
    stored = schedules.get("maintenance.relay")
    assert stored.last_run_at == NOON + timedelta(seconds=10)
    assert stored.next_run_at == NOON + timedelta(seconds=11)


def test_a_wake_up_a_hair_early_waits_on_the_clock_for_its_tick(engine: Engine, replicas: list[Replica]) -> None:
    schedules = ScheduleStore(engine)
    schedules.create(every_second(next_run_at=NOON + timedelta(seconds=1)))
    replica = replicas[0]
    # Given a wake-up a whole second before the tick: nothing fires, the tick stays due
    replica.runner.fire("tick")
    assert jobs_of(engine, "tick") == []
    assert schedules.get("tick").next_run_at == NOON + timedelta(seconds=1)
    # When it wakes up 0.2 s before the tick (within EARLY_WAKE_S)
    replica.clock.advance(0.8)
    replica.runner.fire("tick")
    # Then it waited for the tick on its clock and fired it
    assert replica.clock.now() == NOON + timedelta(seconds=1)
    assert jobs_of(engine, "tick") == [tick_job_id("tick", NOON + timedelta(seconds=1))]
    assert schedules.get("tick").next_run_at == NOON + timedelta(seconds=2)
