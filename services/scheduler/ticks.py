"""Ticks: which fire times are due now, which were missed, and the job id each tick gets.

Pure functions of a trigger and fixed times, so the failover logic is
tested without clocks. The scheduler keeps one number per schedule,
``next_run_at`` (the first tick not handled yet); at each wake-up every tick
from there to now is due:

- a tick late by no more than ``misfire_grace_s`` runs normally, one job per tick;
- older ticks are misfires: ``coalesce`` runs one catch-up job for the latest
  of them, ``skip`` runs none. Both are counted and logged, never dropped
  silently.

A tick's job id is derived from (schedule id, fire time): two replicas that
overlap during a failover insert the same id, and the job store keeps one.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from apscheduler.triggers.base import BaseTrigger

from shared.schedules.triggers import EPOCH, first_tick_after, first_tick_at_or_after
from shared.store.schedules import Misfire

#: Ticks enumerated one by one before counting gives up (a per-second schedule down for ~3 hours).
MAX_SCAN = 10_000
#: Windows searched backwards for the latest missed tick when there were more than MAX_SCAN.
_LOOKBACK = (timedelta(hours=1), timedelta(days=1), timedelta(days=32), timedelta(days=367), timedelta(days=2930))


def tick_job_id(schedule_id: str, fire_time: datetime) -> str:
    """The job id of one tick: a UUIDv7 whose timestamp is the fire time (ms), the rest a hash of both.

    Deterministic, so a tick fired twice (two leaders overlapping) collides
    in the job store instead of running twice; time-ordered like every job id.
    """
    instant = fire_time.astimezone(UTC)
    ms = (instant - EPOCH) // timedelta(milliseconds=1)
    digest = hashlib.sha256(f"{schedule_id}\n{instant.isoformat(timespec='microseconds')}".encode()).digest()
    rand_a = int.from_bytes(digest[:2], "big") & 0xFFF
    rand_b = int.from_bytes(digest[2:10], "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return str(uuid.UUID(int=value))


def id_time(job_id: str) -> datetime:
    """The millisecond timestamp of a UUIDv7 (the fire time, for a tick's job)."""
    return EPOCH + timedelta(milliseconds=uuid.UUID(job_id).int >> 80)


@dataclass(frozen=True)
class Run:
    fire_time: datetime
    catch_up: bool = False  # the one run standing for coalesced misfires


@dataclass
class Plan:
    """What to do about the ticks due at one wake-up."""

    runs: list[Run] = field(default_factory=list)
    #: Ticks older than the grace time: folded into the catch-up run (coalesce) or not run (skip).
    missed: int = 0
    missed_first: datetime | None = None
    missed_last: datetime | None = None
    #: True when there were more than MAX_SCAN missed ticks and ``missed`` is a lower bound.
    missed_truncated: bool = False
    #: The first tick after now: the new ``next_run_at``.
    next_run_at: datetime | None = None

    @property
    def last_fire(self) -> datetime | None:
        return max((run.fire_time for run in self.runs), default=None)


def ticks_between(trigger: BaseTrigger, start: datetime, end: datetime, limit: int = MAX_SCAN) -> list[datetime]:
    """Ticks ``t`` with ``start <= t < end``, at most ``limit`` of them (the earliest)."""
    found: list[datetime] = []
    tick = first_tick_at_or_after(trigger, start)
    while tick is not None and tick < end and len(found) < limit:
        found.append(tick)
        tick = first_tick_after(trigger, tick)
    return found


def latest_tick_before(trigger: BaseTrigger, start: datetime, end: datetime) -> datetime | None:
    """The last tick in ``[start, end)``, searching back from ``end`` in widening windows."""
    for window in (*_LOOKBACK, end - start):
        low = max(start, end - window)
        last = None
        tick = first_tick_at_or_after(trigger, low)
        scanned = 0
        while tick is not None and tick < end:
            last, scanned = tick, scanned + 1
            if scanned > 10 * MAX_SCAN:
                break
            tick = first_tick_after(trigger, tick)
        if last is not None or low == start:
            return last
    return None


def plan_ticks(trigger: BaseTrigger, *, due_from: datetime, now: datetime, misfire: Misfire, grace_s: float) -> Plan:
    """Decide every tick in ``[due_from, now]``: run it, fold it into a catch-up run, or skip it."""
    plan = Plan(next_run_at=first_tick_after(trigger, now))
    cutoff = now - timedelta(seconds=grace_s)  # a tick before this is late by more than the grace time
    if due_from < cutoff:
        missed = ticks_between(trigger, due_from, cutoff)
        if missed:
            plan.missed = len(missed)
            plan.missed_first = missed[0]
            plan.missed_last = missed[-1]
            if len(missed) == MAX_SCAN:
                plan.missed_truncated = True
                plan.missed_last = latest_tick_before(trigger, missed[-1], cutoff) or missed[-1]
            if misfire == Misfire.COALESCE:
                plan.runs.append(Run(plan.missed_last, catch_up=True))
    on_time = ticks_between(trigger, max(due_from, cutoff), now + timedelta(microseconds=1))
    plan.runs.extend(Run(tick) for tick in on_time)
    if len(on_time) == MAX_SCAN:
        # A huge backlog within the grace time: take it in slices, the next wake-up goes on from here.
        plan.next_run_at = first_tick_after(trigger, on_time[-1])
    return plan
