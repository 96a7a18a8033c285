"""The leader's runner: APScheduler holds one job per enabled schedule; each wake-up fires the ticks due.

APScheduler only says *when* to wake up. What to fire is decided from the
store at each wake-up (``next_run_at`` up to now, see ``ticks.py``), so a
restart, a failover or a slow wake-up never loses or repeats a tick: a tick
fired twice gets the same job id and the job store keeps one. A tick's job is
submitted as the API's jobs are (``shared/submission/``): validated, committed
with an outbox entry, then published.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import datetime

from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.date import DateTrigger

from services.scheduler import metrics
from services.scheduler.leader import LeaderLease
from services.scheduler.ticks import Plan, Run, plan_ticks, tick_job_id
from shared import tracing
from shared.clock import Clock, SystemClock
from shared.errors import InvalidInput
from shared.logs import log_context
from shared.schedules.triggers import TimingError, build_trigger, first_tick_at_or_after
from shared.store.schedules import Misfire, Schedule, ScheduleSource, ScheduleStore
from shared.submission.submitter import Submitter
from shared.submission.validation import build_scheduled_job

log = logging.getLogger(__name__)

#: A wake-up this much before the stored next tick waits for it rather than leaving it to the next wake-up.
EARLY_WAKE_S = 0.25
#: Housekeeping rows (relay: every second) record their runs at most this often.
BUILTIN_RECORD_EVERY_S = 10.0
CATCH_UP_SUFFIX = "#catch-up"


class Runner:
    """Keeps APScheduler's jobs equal to the enabled schedules while this replica leads, and fires them."""

    def __init__(
        self,
        *,
        scheduler: BaseScheduler,
        schedules: ScheduleStore,
        submitter: Submitter,
        lease: LeaderLease,
        housekeeping: Mapping[str, Callable[[], object]],
        clock: Clock | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.schedules = schedules
        self.submitter = submitter
        self.lease = lease
        self.housekeeping = housekeeping
        self.clock: Clock = clock or SystemClock()
        self._loaded: dict[str, int] = {}  # schedule id -> version loaded into APScheduler
        self._locks: dict[str, threading.Lock] = {}
        self._builtin_recorded: dict[str, float] = {}  # schedule id -> clock.monotonic() of its last record
        self._locks_guard = threading.Lock()

    # -- loading -----------------------------------------------------------

    def sync(self) -> None:
        """Load new and changed schedules, drop disabled and deleted ones (the leader calls this every second)."""
        wanted = {s.id: s for s in self.schedules.all() if s.enabled}
        for schedule_id in [sid for sid in self._loaded if sid not in wanted]:
            self._unload(schedule_id)
            log.info("schedule %s unloaded (disabled or deleted)", schedule_id)
        now = self.clock.now()
        for schedule in wanted.values():
            if self._loaded.get(schedule.id) == schedule.version:
                continue
            try:
                trigger = build_trigger(schedule.cron, schedule.interval_s, schedule.timezone)
            except TimingError as exc:
                log.error("schedule %s cannot be loaded: %s", schedule.id, exc)
                self._loaded[schedule.id] = schedule.version
                continue
            # NOTE: no APScheduler misfire handling: a late wake-up still fires, and ticks.plan_ticks decides.
            options = {"misfire_grace_time": None, "coalesce": True, "max_instances": 1, "replace_existing": True}
            self.scheduler.add_job(self.fire, trigger, args=[schedule.id], id=schedule.id, name=schedule.id, **options)
            if schedule.next_run_at is None or schedule.next_run_at <= now:
                # Ticks came due while nobody led (or it has never been planned): catch up now.
                self.scheduler.add_job(
                    self.fire, DateTrigger(now), args=[schedule.id], id=schedule.id + CATCH_UP_SUFFIX, **options
                )
            if schedule.id in self._loaded:
                log.info("schedule %s reloaded at version %d", schedule.id, schedule.version)
            self._loaded[schedule.id] = schedule.version

    def unload_all(self) -> None:
        """Forget every schedule (leadership lost, or shutting down)."""
        self.scheduler.remove_all_jobs()
        self._loaded.clear()

    def _unload(self, schedule_id: str) -> None:
        for job_id in (schedule_id, schedule_id + CATCH_UP_SUFFIX):
            if self.scheduler.get_job(job_id) is not None:
                self.scheduler.remove_job(job_id)
        self._loaded.pop(schedule_id, None)

    def _lock(self, schedule_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(schedule_id, threading.Lock())

    # -- firing ------------------------------------------------------------

    def fire(self, schedule_id: str) -> None:
        """APScheduler's callback: handle every tick of the schedule due now."""
        if not self.lease.is_leader:
            return
        with self._lock(schedule_id), log_context(schedule_id=schedule_id):
            try:
                self._fire(schedule_id)
            except Exception:
                log.exception("schedule %s: firing failed; its ticks stay due for the next wake-up", schedule_id)

    def _fire(self, schedule_id: str) -> None:
        schedule = self.schedules.find(schedule_id)
        if schedule is None or not schedule.enabled:
            return
        trigger = build_trigger(schedule.cron, schedule.interval_s, schedule.timezone)
        now = self.clock.now()
        due_from = schedule.next_run_at
        if due_from is None:
            first = first_tick_at_or_after(trigger, now)
            self.schedules.record_run(schedule.id, version=schedule.version, last_run_at=None, next_run_at=first)
            return
        if due_from > now:
            early_s = (due_from - now).total_seconds()
            if early_s > EARLY_WAKE_S:
                return  # a wake-up of a timing changed since (the reload is under way)
            # NOTE: a wake-up a hair early (clock granularity) waits; skipping would delay the tick a whole period.
            self.clock.sleep(early_s)
            now = self.clock.now()
        plan = plan_ticks(
            trigger, due_from=due_from, now=now, misfire=schedule.misfire, grace_s=schedule.misfire_grace_s
        )
        if schedule.source == ScheduleSource.BUILTIN:
            self._run_builtin(schedule, plan)
            return
        self._report_misfires(schedule, plan)
        handled: list[datetime] = []
        for run in plan.runs:
            if not self.lease.is_leader:
                log.warning("schedule %s: leadership lost mid-fire; the new leader takes the rest", schedule.id)
                return
            if self._fire_tick(schedule, run):
                handled.append(run.fire_time)
        self.schedules.record_run(
            schedule.id, version=schedule.version, last_run_at=max(handled, default=None), next_run_at=plan.next_run_at
        )

    def _report_misfires(self, schedule: Schedule, plan: Plan) -> None:
        if not plan.missed:
            return
        outcome = "coalesced" if schedule.misfire == Misfire.COALESCE else "skipped"
        metrics.schedule_misfires_total.labels(schedule.id, outcome).inc(plan.missed)
        count = f"more than {plan.missed}" if plan.missed_truncated else str(plan.missed)
        assert plan.missed_first is not None and plan.missed_last is not None
        what = (
            f"coalesced into one catch-up run for {plan.missed_last.isoformat()}"
            if schedule.misfire == Misfire.COALESCE
            else "skipped"
        )
        log.warning(
            "schedule %s: %s tick(s) from %s to %s missed by more than misfire_grace_s=%gs; %s",
            schedule.id,
            count,
            plan.missed_first.isoformat(),
            plan.missed_last.isoformat(),
            schedule.misfire_grace_s,
            what,
        )

    def _fire_tick(self, schedule: Schedule, run: Run) -> bool:
        """Submit the job of one tick; True when its job exists now (made here or by another replica)."""
        # NOTE: each fire is a trace of its own (no request started it); its job joins that trace.
        attributes = {"jobrelay.schedule_id": schedule.id, "jobrelay.task": schedule.task}
        with tracing.span(f"fire {schedule.id}", new_trace=True, attributes=attributes):
            return self._submit_tick(schedule, run)

    def _submit_tick(self, schedule: Schedule, run: Run) -> bool:
        try:
            job = build_scheduled_job(
                self.submitter.registry,
                job_id=tick_job_id(schedule.id, run.fire_time),
                schedule_id=schedule.id,
                task=schedule.task,
                args=schedule.args,
                namespace=schedule.namespace,
            )
        except InvalidInput as exc:
            log.error("schedule %s: tick %s not fired: %s", schedule.id, run.fire_time.isoformat(), exc.detail)
            metrics.schedule_misfires_total.labels(schedule.id, "error").inc()
            # NOTE: counted and logged, and the schedule moves on: retrying a tick that cannot be built would block it.
            return False
        # NOTE: the job id is derived from the tick, so a second leader's (or a restarted one's) submit of
        # the same tick is refused by the store: never a double fire.
        if not self.submitter.submit_once(job):
            log.info("schedule %s: tick %s fired already (job %s)", schedule.id, run.fire_time.isoformat(), job.id)
            return True
        lag_s = (self.clock.now() - run.fire_time).total_seconds()
        metrics.schedule_fires_total.labels(schedule.id).inc()
        metrics.schedule_lag_seconds.labels(schedule.id).observe(lag_s)
        metrics.schedule_last_fire_timestamp_seconds.labels(schedule.id).set(run.fire_time.timestamp())
        with log_context(job_id=job.id, task=job.task, queue=job.queue):
            log.info(
                "schedule %s fired tick %s%s (lag %.3fs)",
                schedule.id,
                run.fire_time.isoformat(),
                " as the catch-up run" if run.catch_up else "",
                lag_s,
            )
        return True

    def _run_builtin(self, schedule: Schedule, plan: Plan) -> None:
        """Housekeeping runs once per wake-up however many ticks are due: each run does all the work there is."""
        tick = plan.last_fire
        if tick is not None:
            work = self.housekeeping.get(schedule.id)
            started = self.clock.now()
            try:
                if work is None:
                    log.error("built-in schedule %s has no housekeeping function", schedule.id)
                else:
                    work()
            except Exception:
                log.exception("housekeeping %s failed; it runs again at its next tick", schedule.id)
            metrics.schedule_fires_total.labels(schedule.id).inc()
            metrics.schedule_lag_seconds.labels(schedule.id).observe((started - tick).total_seconds())
            metrics.schedule_last_fire_timestamp_seconds.labels(schedule.id).set(tick.timestamp())
        # NOTE: the relay ticks every second, at the same instants as user schedules; a row write per run would
        # compete with their job inserts for SQLite's write lock. A stale next_run_at only makes the next
        # wake-up see a few due ticks, which housekeeping runs once anyway.
        if self.clock.monotonic() - self._builtin_recorded.get(schedule.id, float("-inf")) >= BUILTIN_RECORD_EVERY_S:
            self.schedules.record_run(
                schedule.id, version=schedule.version, last_run_at=tick, next_run_at=plan.next_run_at
            )
            self._builtin_recorded[schedule.id] = self.clock.monotonic()
