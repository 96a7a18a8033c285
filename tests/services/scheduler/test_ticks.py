"""Tick job ids and the misfire plan, on fixed times."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from services.scheduler.ticks import MAX_SCAN, Run, id_time, plan_ticks, tick_job_id
from shared.ids import is_id
from shared.schedules.triggers import cron_trigger, interval_trigger
from shared.store.schedules import Misfire

NOON = datetime(2024, 6, 1, 12, tzinfo=UTC)


def seconds(n: float) -> timedelta:
    return timedelta(seconds=n)


# -- derived job ids ---------------------------------------------------------


def test_tick_ids_are_deterministic_uuid7_with_the_fire_time() -> None:
    fire = NOON + timedelta(milliseconds=123)
    job_id = tick_job_id("nightly-report", fire)
    assert job_id == tick_job_id("nightly-report", fire)
    # The same instant in another zone is the same tick.
    assert job_id == tick_job_id("nightly-report", fire.astimezone(datetime.now().astimezone().tzinfo))
    parsed = uuid.UUID(job_id)
    assert is_id(job_id) and parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert id_time(job_id) == fire


def test_tick_ids_differ_by_schedule_and_by_tick_and_sort_by_fire_time() -> None:
    assert tick_job_id("a", NOON) != tick_job_id("b", NOON)
    assert tick_job_id("a", NOON) != tick_job_id("a", NOON + timedelta(microseconds=1))
    ticks = [NOON + seconds(s) for s in (0, 0.001, 1, 60, 3600, 86400 * 400)]
    ids = [tick_job_id(name, tick) for tick in ticks for name in ("z-last", "a-first")]
    by_id = sorted(ids)
    assert [id_time(i) for i in by_id] == sorted(id_time(i) for i in ids)


# -- the misfire plan ---------------------------------------------------------


def test_the_tick_due_now_runs_normally() -> None:
    plan = plan_ticks(interval_trigger(1), due_from=NOON, now=NOON + seconds(0.004), misfire=Misfire.SKIP, grace_s=1)
    assert plan.runs == [Run(NOON)]
    assert plan.missed == 0
    assert plan.next_run_at == NOON + seconds(1)


def test_nothing_due_yet() -> None:
    plan = plan_ticks(interval_trigger(10), due_from=NOON, now=NOON - seconds(1), misfire=Misfire.SKIP, grace_s=1)
    assert plan.runs == [] and plan.missed == 0 and plan.next_run_at == NOON


def test_late_ticks_within_the_grace_time_each_run() -> None:
    # A failover took 3 s; the grace time is 60 s: every tick runs, none is a misfire.
    now = NOON + seconds(3.2)
    plan = plan_ticks(interval_trigger(1), due_from=NOON, now=now, misfire=Misfire.SKIP, grace_s=60)
    assert [run.fire_time for run in plan.runs] == [NOON + seconds(s) for s in range(4)]
    assert not any(run.catch_up for run in plan.runs)
    assert plan.missed == 0
    assert plan.next_run_at == NOON + seconds(4)


def test_older_ticks_coalesce_into_one_catch_up_run_for_the_latest() -> None:
    # Down from 12:00 to 12:10:00.5 with a per-minute cron and a 90 s grace time.
    now = NOON + timedelta(minutes=10, milliseconds=500)
    plan = plan_ticks(cron_trigger("* * * * *", "UTC"), due_from=NOON, now=now, misfire=Misfire.COALESCE, grace_s=90)
    # 12:00 .. 12:08 are late by more than 90 s: one catch-up run for 12:08; 12:09 and 12:10 run normally.
    assert plan.missed == 9
    assert plan.missed_first == NOON and plan.missed_last == NOON + timedelta(minutes=8)
    assert plan.runs == [
        Run(NOON + timedelta(minutes=8), catch_up=True),
        Run(NOON + timedelta(minutes=9)),
        Run(NOON + timedelta(minutes=10)),
    ]
    assert plan.next_run_at == NOON + timedelta(minutes=11)


def test_older_ticks_are_skipped_and_counted() -> None:
    now = NOON + timedelta(minutes=10, milliseconds=500)
    plan = plan_ticks(cron_trigger("* * * * *", "UTC"), due_from=NOON, now=now, misfire=Misfire.SKIP, grace_s=90)
    assert plan.missed == 9
    assert plan.runs == [Run(NOON + timedelta(minutes=9)), Run(NOON + timedelta(minutes=10))]


def test_late_by_exactly_the_grace_time_still_runs() -> None:
    plan = plan_ticks(interval_trigger(60), due_from=NOON, now=NOON + seconds(30), misfire=Misfire.SKIP, grace_s=30)
    assert plan.runs == [Run(NOON)] and plan.missed == 0


def test_a_daily_cron_missed_for_a_day_coalesces_into_one_run() -> None:
    # Scheduler down from 01:00 on the 1st to 03:00 on the 3rd; the 02:00 ticks of the 1st and 2nd were missed.
    trigger = cron_trigger("0 2 * * *", "UTC")
    due_from = datetime(2024, 6, 1, 2, tzinfo=UTC)
    now = datetime(2024, 6, 3, 3, tzinfo=UTC)
    coalesced = plan_ticks(trigger, due_from=due_from, now=now, misfire=Misfire.COALESCE, grace_s=600)
    assert coalesced.runs == [Run(datetime(2024, 6, 3, 2, tzinfo=UTC), catch_up=True)]
    assert coalesced.missed == 3
    skipped = plan_ticks(trigger, due_from=due_from, now=now, misfire=Misfire.SKIP, grace_s=600)
    assert skipped.runs == [] and skipped.missed == 3
    assert skipped.next_run_at == datetime(2024, 6, 4, 2, tzinfo=UTC)


def test_a_huge_backlog_is_counted_up_to_a_bound_and_the_latest_tick_is_still_found() -> None:
    # A per-second schedule down for a week: far more than MAX_SCAN missed ticks.
    now = NOON + timedelta(days=7, milliseconds=300)
    plan = plan_ticks(interval_trigger(1), due_from=NOON, now=now, misfire=Misfire.COALESCE, grace_s=5)
    assert plan.missed_truncated and plan.missed == MAX_SCAN
    # 12:00:00.3 less 5 s of grace: 11:59:55 is the latest missed tick, 11:59:56 .. 12:00:00 are on time.
    week = NOON + timedelta(days=7)
    assert plan.runs[0] == Run(week - seconds(5), catch_up=True)
    assert [run.fire_time for run in plan.runs[1:]] == [week - seconds(s) for s in range(4, -1, -1)]
