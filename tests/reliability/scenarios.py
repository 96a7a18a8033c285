"""The fault-injection scenarios, shared by the fast form (pytest) and the long form (``python -m bench.chaos``).

Each scenario takes a running ``Cluster`` and a ``Size``, submits a known
set of ``reliability.effect`` jobs while it injects its fault, audits the
outcome (``tests.reliability.audit``) and returns a ``Report``. The fast
form asserts that a report has no violations; the long form also writes the
figures into docs/reliability.md. ``SCENARIOS`` lists them in running order.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from services.worker.supervisor import MAX_RESTART_DELAY_S
from tests.reliability.audit import Report, audit, epoch, job_rows
from tests.reliability.cluster import Cluster
from tests.reliability.effects_db import connect
from tests.reliability.load import Load


@dataclass(frozen=True)
class Size:
    """How big a run is; the fast form must stay within its time budget on two cores."""

    name: str
    jobs: int
    work_ms: int
    rate_per_s: float
    kills: int
    outage_s: float
    settle_s: float
    #: Cluster settings: the fast form shortens the failure detectors, the long form keeps the defaults.
    env: dict[str, str] = field(default_factory=dict)


FAST = Size(
    "fast",
    jobs=300,
    work_ms=30,
    rate_per_s=60.0,
    kills=4,
    outage_s=3.0,
    settle_s=60.0,
    env={"LEADER_LEASE_S": "3", "WORKER_HEARTBEAT_S": "0.5", "WORKER_DEAD_AFTER_S": "3"},
)
LONG = Size("long", jobs=2000, work_ms=30, rate_per_s=100.0, kills=20, outage_s=10.0, settle_s=300.0)


def prefix(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def sleep_until(moment: float) -> None:
    if (pause := moment - time.monotonic()) > 0:
        time.sleep(pause)


def redelivery_s(cluster: Cluster, kills: list[tuple[int, float]], report: Report) -> float:
    """Longest time from a kill to the next run of a job the killed process was running.

    A run of the killed process without an end was interrupted; its job must
    have run again, later, elsewhere.
    """
    conn = connect(cluster.effects_db)
    try:
        runs = list(conn.execute("SELECT job_id, pid, started, ended FROM executions"))
    finally:
        conn.close()
    longest = 0.0
    for pid, killed_at in kills:
        interrupted = {job_id for job_id, run_pid, started, ended in runs if run_pid == pid and ended is None}
        for job_id in interrupted:
            later = [started for run_job, _pid, started, _ended in runs if run_job == job_id and started > killed_at]
            if not later:
                report.violations.append(f"job {job_id}, interrupted by the kill of {pid}, never ran again")
                continue
            longest = max(longest, min(later) - killed_at)
    return longest


def running_in(cluster: Cluster, pids: list[int], *, timeout_s: float) -> list[int]:
    """Wait (bounded) until some of these worker processes are in the middle of a job; returns those."""
    deadline = time.monotonic() + timeout_s
    conn = connect(cluster.effects_db)
    try:
        while time.monotonic() < deadline:
            busy = {row[0] for row in conn.execute("SELECT pid FROM executions WHERE ended IS NULL")}
            if busy & set(pids):
                return sorted(busy & set(pids))
            time.sleep(0.02)
    finally:
        conn.close()
    raise AssertionError(f"no job started in worker processes {pids} within {timeout_s}s")


def requeue_s(cluster: Cluster, kills: list[tuple[int, float]], report: Report) -> float:
    """Longest time from a kill to the supervisor putting the dead process's messages back, from its log."""
    owners: dict[int, str] = {}
    events: list[tuple[float, str]] = []
    for line in cluster.worker.log_text().splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            entry = json.loads(line)
            events.append((datetime.fromisoformat(entry["ts"]).timestamp(), entry["message"]))
            if match := re.match(r"started worker process (\d+) \(slot \d+, id (\S+)\)", entry["message"]):
                owners[int(match.group(1))] = match.group(2)
    longest = 0.0
    for pid, killed_at in kills:
        owner = owners.get(pid, "?")
        noticed = [t for t, m in events if t >= killed_at - 0.01 and m.startswith(f"worker process {pid} exited")]
        requeued = [t for t, m in events if t >= killed_at - 0.01 and m.endswith(f"of dead worker {owner}")]
        done = requeued or noticed
        if not done:
            report.violations.append(f"the supervisor never noticed the death of worker process {pid}")
            continue
        longest = max(longest, min(done) - killed_at)
    return longest


def finished_after(cluster: Cluster, job_ids: list[str], moment: float) -> float | None:
    """Seconds from ``moment`` until the first of these jobs finished after it (the work resumed)."""
    times = [epoch(row.finished_at) for row in job_rows(cluster, job_ids).values()]
    later = [t for t in times if t is not None and t > moment]
    return min(later) - moment if later else None


def drained_after(rows: dict[str, object], accepted_before: list[str], moment: float) -> float:
    """Seconds from ``moment`` until every job accepted before it was final."""
    ends = [epoch(getattr(rows[job_id], "finished_at", None)) for job_id in accepted_before if job_id in rows]
    return max(0.0, max((t for t in ends if t is not None), default=moment) - moment)


# -- 1. kill -9 of worker processes -----------------------------------------------


def worker_kills(cluster: Cluster, size: Size, *, seed: int = 7) -> Report:
    """SIGKILL a random worker process at random moments while jobs stream in."""
    rng = random.Random(seed)
    report = Report("kill -9 of worker processes")
    started = time.monotonic()
    load = Load(
        cluster, prefix=prefix("kill9"), count=size.jobs, work_ms=size.work_ms, rate_per_s=size.rate_per_s
    ).start()
    span_s = size.jobs / size.rate_per_s
    kills: list[tuple[int, float]] = []
    for i in range(size.kills):
        sleep_until(load.started + span_s * (i + rng.random()) / size.kills)
        # The victim is a process in the middle of a job, so every kill interrupts work.
        # NOTE: one killed within 5 s of its start counts as a crash loop: the supervisor requeues
        # its messages at once and restarts the slot at once the first time, then backs off.
        victim = rng.choice(running_in(cluster, cluster.wait_worker_pids(1, timeout_s=30), timeout_s=30))
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
            kills.append((victim, time.time()))
            report.fault(f"SIGKILL worker process {victim} at +{time.monotonic() - load.started:.1f}s")
    load.join()
    report.submitted, report.accepted = len(load.submissions), len(load.accepted())
    report.answers = load.answers()
    report.violations.extend(load.violations())
    audit(cluster, report, [s.job_id for s in load.accepted() if s.job_id], settle_timeout_s=size.settle_s)
    report.recovery_s = requeue_s(cluster, kills, report)
    report.recovery_what = "longest time from a kill to its messages back on the queue"
    report.notes.append(
        f"longest time from a kill to the re-run of a job it interrupted: {redelivery_s(cluster, kills, report):.2f}s"
        " (under sustained kills a requeued job goes to the front of the queue and is prefetched by the next"
        " process, which the next kill may hit too; a tail of one to two minutes matches the reconcile's"
        " republish of a job whose message it found in no queue twice, 30 s apart)"
    )
    # A slot killed young several times in a row restarts after its back-off (up to MAX_RESTART_DELAY_S).
    cluster.wait_worker_pids(cluster.worker_processes, timeout_s=MAX_RESTART_DELAY_S + 15)
    report.runtime_s = time.monotonic() - started
    return report


# -- 2. rolling restart (SIGTERM) and the scheduler leader killed -------------------


TICK_SCHEDULE = "reliability-tick"


def restarts(cluster: Cluster, size: Size) -> Report:
    """SIGTERM a worker process, roll the whole worker, kill the leader (SIGKILL, then SIGTERM), with a pod loss."""
    report = Report("rolling restart and scheduler leader killed")
    started = time.monotonic()
    status, body = cluster.call(
        "POST",
        "/v1/schedules",
        {"id": TICK_SCHEDULE, "task": "reliability.effect", "args": {"key": "tick"}, "interval_s": 1},
    )
    assert status == 201, body
    work_ms = max(size.work_ms, 100)  # long enough that a SIGTERM lands mid-job
    load = Load(cluster, prefix=prefix("restart"), count=size.jobs, work_ms=work_ms, rate_per_s=size.rate_per_s / 2)
    load.start()
    kills: list[tuple[int, float]] = []
    lease_ttl_s = float(cluster.base_env.get("LEADER_LEASE_S", "10"))

    # A worker process gets SIGTERM mid-job: it finishes in-flight work and the supervisor replaces it.
    sleep_until(load.started + 1.0)
    victim = running_in(cluster, cluster.worker_pids(), timeout_s=15)[0]
    os.kill(victim, signal.SIGTERM)
    report.fault(f"SIGTERM worker process {victim} mid-job")
    cluster.wait_worker_pids(cluster.worker_processes, timeout_s=15, exclude={victim})

    # The whole worker rolls: SIGTERM, it drains and exits 0, a new one starts.
    running_in(cluster, cluster.worker_pids(), timeout_s=15)
    cluster.worker.signal(signal.SIGTERM)
    code = cluster.worker.wait(timeout_s=60)
    report.fault("SIGTERM the worker supervisor (rolling restart), then start a new one")
    if code != 0:
        report.violations.append(f"the worker exited with {code} on SIGTERM")
    cluster.worker.start()
    cluster.wait_worker_pids(cluster.worker_processes, timeout_s=30)

    # A node is lost: the scheduler leader and the whole worker die at once (SIGKILL, no cleanup).
    leader, _ = cluster.wait_leader(timeout_s=lease_ttl_s + 5)
    doomed = cluster.worker_pids()
    running_in(cluster, doomed, timeout_s=15)  # so the loss interrupts work
    leader.signal(signal.SIGKILL)
    cluster.worker.signal(signal.SIGKILL)
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    killed_at = time.time()
    kills.extend((pid, killed_at) for pid in doomed)
    report.fault(f"SIGKILL the scheduler leader ({leader.name}) and the whole worker (supervisor and children)")
    leader.wait(timeout_s=10)
    cluster.worker.wait(timeout_s=10)
    cluster.worker.start()
    successor, failover_s = cluster.wait_leader(timeout_s=lease_ttl_s + 10, other_than=leader)
    report.notes.append(f"after SIGKILL of the leader, {successor.name} led within {failover_s:.2f}s")
    leader.start()  # as Kubernetes restarts it; it stands by
    cluster.wait_standing_by(leader, timeout_s=30)
    cluster.wait_worker_pids(cluster.worker_processes, timeout_s=30)

    # The new leader gets SIGTERM: it releases the lease, so the standby takes over at once.
    successor.signal(signal.SIGTERM)
    report.fault(f"SIGTERM the scheduler leader ({successor.name})")
    third, handover_s = cluster.wait_leader(timeout_s=lease_ttl_s + 10, other_than=successor)
    report.notes.append(f"after SIGTERM of the leader, {third.name} led within {handover_s:.2f}s")
    if successor.wait(timeout_s=30) != 0:
        report.violations.append(f"{successor.name} did not exit 0 on SIGTERM")
    successor.start()

    load.join()
    status, _ = cluster.call("DELETE", f"/v1/schedules/{TICK_SCHEDULE}")
    assert status in (200, 204), status
    time.sleep(2.5)  # the leader unloads a deleted schedule within a second or two
    ticks = [job.id for job in _tick_jobs(cluster)]
    report.notes.append(f"{len(ticks)} ticks of an every-second schedule ran through the failovers")
    report.submitted = len(load.submissions) + len(ticks)
    report.accepted = len(load.accepted()) + len(ticks)
    report.answers = load.answers()
    report.violations.extend(load.violations())
    job_ids = [s.job_id for s in load.accepted() if s.job_id] + ticks
    audit(cluster, report, job_ids, settle_timeout_s=size.settle_s)
    report.recovery_s = redelivery_s(cluster, kills, report)
    report.recovery_what = "from the node loss to the re-run of the dead worker's jobs (orphan requeue, new leader)"
    report.runtime_s = time.monotonic() - started
    return report


def _tick_jobs(cluster: Cluster) -> list[object]:
    from shared.store.jobs import JobFilter

    found, cursor = [], None
    while True:
        page = cluster.store.page(JobFilter(schedule_id=TICK_SCHEDULE), limit=500, cursor=cursor)
        found.extend(page.items)
        if page.next_cursor is None:
            return found
        cursor = page.next_cursor


# -- 3. Redis restarted, then unreachable ---------------------------------------------


def redis_faults(cluster: Cluster, size: Size, *, crash: bool = False) -> Report:
    """Restart Redis from its AOF under load; then take it away for ``outage_s`` while clients submit.

    ``crash=False`` stops it with SIGTERM (it writes its AOF out first, as in a rolling restart);
    ``crash=True`` with SIGKILL, where ``appendfsync everysec`` may lose writes Redis acknowledged
    in its last second or two, so messages of accepted jobs may be gone.
    """
    how = "SIGKILL" if crash else "SIGTERM"
    report = Report(f"Redis {'crashed' if crash else 'restarted'} ({how}, AOF) and unreachable")
    started = time.monotonic()
    span_s = size.outage_s + 4.0
    load = Load(
        cluster,
        prefix=prefix("redis"),
        count=size.jobs,
        work_ms=size.work_ms,
        rate_per_s=size.jobs / span_s,
        fail_every=max(5, size.jobs // 60),  # some 60 jobs retry; each runs 2 x 0.5 s
        retry_after_s=2.0,  # so that workers hold delayed messages whenever Redis goes away
    ).start()
    sleep_until(load.started + 1.0)
    cluster.redis.stop(kill=crash)
    cluster.redis.start()
    report.fault(f"{how} redis-server and restart it on the same port and AOF")
    sleep_until(load.started + 2.0)
    cluster.redis.stop(kill=crash)
    down_at = time.monotonic()
    status, problem = cluster.call("GET", "/readyz", token=None)
    if status != 503 or "redis" not in str(problem):
        report.violations.append(f"/readyz with Redis down answered {status}: {problem}")
    sleep_until(down_at + size.outage_s)
    cluster.redis.start()
    back = time.time()
    report.fault(f"{how} redis-server, away for {size.outage_s:g}s (connections refused), then back on its AOF")
    accepted_before = [s.job_id for s in load.submissions if s.job_id and s.accepted_at and s.accepted_at < back]
    load.join()
    report.submitted, report.accepted = len(load.submissions), len(load.accepted())
    report.answers = load.answers()
    report.violations.extend(load.violations())
    rows, _ = audit(cluster, report, [s.job_id for s in load.accepted() if s.job_id], settle_timeout_s=size.settle_s)
    report.recovery_s = drained_after(rows, accepted_before, back)
    report.recovery_what = "from Redis back until every job accepted before then was final"
    resumed = finished_after(cluster, [s.job_id for s in load.accepted() if s.job_id], back)
    report.notes.append(f"the first job finished {resumed or 0:.2f}s after Redis was back")
    report.notes.append(f"slowest answer to a submission: {load.slowest_s():.2f}s")
    report.runtime_s = time.monotonic() - started
    return report


# -- 4. the SQL store unreachable -------------------------------------------------------


def store_lock(cluster: Cluster, size: Size) -> Report:
    """Hold an exclusive lock on the SQLite job store for ``outage_s`` while clients submit."""
    report = Report("SQL store locked (SQLite BEGIN EXCLUSIVE)")
    started = time.monotonic()
    assert cluster.database_url.startswith("sqlite:///")
    span_s = size.outage_s + 4.0
    load = Load(
        cluster,
        prefix=prefix("sqlite"),
        count=size.jobs,
        work_ms=size.work_ms,
        rate_per_s=size.jobs / span_s,
        request_timeout_s=size.outage_s + 40,
    ).start()
    sleep_until(load.started + 1.0)
    holder = sqlite3.connect(cluster.database_url.removeprefix("sqlite:///"), isolation_level=None, timeout=30)
    holder.execute("BEGIN EXCLUSIVE")
    locked_at = time.monotonic()
    report.fault(f"BEGIN EXCLUSIVE on the job store for {size.outage_s:g}s")
    reads = []
    while time.monotonic() < locked_at + size.outage_s:
        probe = time.monotonic()
        status, _ = cluster.call("GET", "/v1/jobs?limit=1", timeout_s=size.outage_s + 10)
        reads.append((status, time.monotonic() - probe))
        time.sleep(0.5)
    holder.execute("ROLLBACK")
    holder.close()
    released = time.time()
    load.join()
    report.submitted, report.accepted = len(load.submissions), len(load.accepted())
    report.answers = load.answers()
    report.violations.extend(load.violations())
    if any(status != 200 for status, _ in reads):
        report.violations.append(f"reads during the lock answered {sorted({s for s, _ in reads})}")
    job_ids = [s.job_id for s in load.accepted() if s.job_id]
    audit(cluster, report, job_ids, settle_timeout_s=size.settle_s)
    report.recovery_s = finished_after(cluster, job_ids, released)
    report.recovery_what = "from the lock's release to the first job finished after it (workers resumed)"
    report.notes.append(
        f"slowest submission {load.slowest_s():.2f}s (a write waits STORE_TIMEOUT_S for the lock, then answers 503); "
        f"slowest read during the lock {max((d for _, d in reads), default=0):.2f}s"
    )
    report.runtime_s = time.monotonic() - started
    return report


def store_unreachable(cluster: Cluster, size: Size, proxy: object) -> Report:
    """Cut every connection to PostgreSQL (through a proxy) for ``outage_s`` while clients submit."""
    from tests.reliability.proxy import TcpProxy

    assert isinstance(proxy, TcpProxy)
    report = Report("SQL store unreachable (PostgreSQL connections cut)")
    started = time.monotonic()
    span_s = size.outage_s + 4.0
    load = Load(cluster, prefix=prefix("pg"), count=size.jobs, work_ms=size.work_ms, rate_per_s=size.jobs / span_s)
    load.start()
    sleep_until(load.started + 1.0)
    proxy.cut()
    report.fault(f"PostgreSQL unreachable for {size.outage_s:g}s (open connections closed, new ones refused)")
    time.sleep(size.outage_s)
    proxy.restore()
    back = time.time()
    load.join()
    report.submitted, report.accepted = len(load.submissions), len(load.accepted())
    report.answers = load.answers()
    report.violations.extend(load.violations())
    job_ids = [s.job_id for s in load.accepted() if s.job_id]
    audit(cluster, report, job_ids, settle_timeout_s=size.settle_s)
    report.recovery_s = finished_after(cluster, job_ids, back)
    report.recovery_what = "from PostgreSQL back to the first job finished after it (workers resumed)"
    report.notes.append(f"slowest answer to a submission: {load.slowest_s():.2f}s")
    report.runtime_s = time.monotonic() - started
    return report


#: The scenarios on one fresh cluster each, in the order the long form runs them.
SCENARIOS: dict[str, Callable[[Cluster, Size], Report]] = {
    "kill9": worker_kills,
    "restarts": restarts,
    "redis": redis_faults,
    "sqlite": store_lock,
}
