"""Two or three real scheduler processes: one leader, failover on SIGKILL and SIGTERM, never a double fire."""

from __future__ import annotations

import itertools
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

from services.scheduler.ticks import tick_job_id
from shared.store.jobs import JobFilter, JobStore
from tests.services.scheduler.conftest import LEASE_S, SchedulerStack

SCHEDULES = """\
[[schedule]]
id = "tick"
task = "diagnostics.echo"
args = { message = "tick" }
interval_s = 1
misfire_grace_s = 60

[[schedule]]
id = "tick-strict"
task = "diagnostics.echo"
args = { message = "tick" }
interval_s = 1
misfire = "skip"
misfire_grace_s = 1
"""


def wait_ticks(stack: SchedulerStack, count: int, after: float, timeout_s: float = 10) -> None:
    stack.wait_for(
        f"{count} ticks after {after}",
        lambda: len([t for t in stack.fire_times("tick") if t > after]) >= count,
        timeout_s,
    )


def test_one_job_per_tick_across_sigkill_and_sigterm_failovers(tmp_path: Path, scheduler_stack: SchedulerStack) -> None:
    stack = scheduler_stack
    schedules_file = tmp_path / "schedules.toml"
    schedules_file.write_text(SCHEDULES)
    stack.env["SCHEDULES_FILE"] = str(schedules_file)

    # Given two replicas, one of them leading and firing
    a, b = stack.start("a"), stack.start("b")
    first = stack.leader()
    wait_ticks(stack, 3, after=0)

    # When the leader is killed outright, a standby takes over within the lease TTL (a third replica joins)
    killed_at = time.time()
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(timeout=10)
    c = stack.start("c")
    second = stack.leader([p for p in (a, b, c) if p is not first], timeout_s=LEASE_S + 5)
    took_over_s = time.time() - killed_at
    assert took_over_s <= LEASE_S + 1.5, took_over_s
    wait_ticks(stack, 3, after=time.time())

    # And when the new leader stops gracefully, it hands over at once
    stopped_at = time.time()
    assert stack.stop(second) == 0, second.log()
    third = stack.leader([p for p in (a, b, c) if p not in (first, second)], timeout_s=LEASE_S + 5)
    assert time.time() - stopped_at <= LEASE_S, second.log()
    wait_ticks(stack, 3, after=time.time())
    assert stack.stop(third) == 0, third.log()
    for process in (a, b, c):
        assert process.process.poll() is not None or stack.stop(process) == 0

    # Then every tick from the first to the last made exactly one job, with its derived id
    ticks = stack.fire_times("tick")
    assert len(ticks) >= 9
    assert ticks == [ticks[0] + i for i in range(len(ticks))], ticks
    jobs = JobStore(stack.engine).page(JobFilter(schedule_id="tick"), limit=500).items
    assert {job.id for job in jobs} == {tick_job_id("tick", datetime.fromtimestamp(t, UTC)) for t in ticks}
    assert all(job.published_at is not None for job in jobs)
    # And the strict schedule (ticks late by over 1 s are skipped) never fired twice nor paused beyond the TTL
    strict = stack.fire_times("tick-strict")
    gaps = [later - earlier for earlier, later in itertools.pairwise(strict)]
    assert len(set(strict)) == len(strict) and min(gaps) >= 1
    assert max(gaps) <= LEASE_S + 1, gaps


def test_a_bad_schedules_file_stops_the_scheduler_naming_file_line_and_reason(
    tmp_path: Path, scheduler_stack: SchedulerStack
) -> None:
    schedules_file = tmp_path / "schedules.toml"
    schedules_file.write_text(SCHEDULES + '\n[[schedule]]\nid = "bad"\ntask = "diagnostics.echo"\ncron = "0 2 * *"\n')
    scheduler_stack.env["SCHEDULES_FILE"] = str(schedules_file)
    process = scheduler_stack.start("bad")
    assert process.process.wait(timeout=30) == 2
    output = process.log()
    assert f"{schedules_file}, line 16 ([[schedule]] #3)" in output
    assert "cron: a cron expression has 5 fields" in output
