"""Scenario: tasks that misbehave, while other jobs run beside them in the same worker processes.

Each task of ``misbehaving_tasks.py`` is submitted once over HTTP while a steady load of
``reliability.effect`` jobs runs: every misbehaving job must end in its documented state with a
clear error, readable by every reader of the API (the job, the listing), and the jobs beside
them must all finish exactly once (the audit). How long the neighbours waited is written down:
a process that dies under a task costs its neighbours a requeue and one process start.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.reliability.audit import Report, audit, epoch, job_rows
from tests.reliability.cluster import Cluster
from tests.reliability.load import Load
from tests.reliability.misbehaving_tasks import CRASH_RETRIES
from tests.reliability.scenarios import Size, prefix

#: What the cluster's workers load for this scenario.
TASK_MODULES = "tests.reliability.effect,tests.reliability.misbehaving_tasks"
NEIGHBOUR_WORK_MS = 100


@dataclass(frozen=True)
class Expect:
    task: str
    status: str
    #: What the job's JSON must hold beyond its status: (field, check, what the check means).
    check: Callable[[dict[str, Any]], bool]
    what: str


def _error(job: dict[str, Any]) -> dict[str, Any]:
    return job.get("error") or {}


def _not_json(type_name: str, path: str) -> Callable[[dict[str, Any]], bool]:
    def check(job: dict[str, Any]) -> bool:
        error = _error(job)
        message = str(error.get("message"))
        return (
            error.get("type") == "ResultNotJSON"
            and error.get("retryable") is False
            and type_name in message
            and path in message
            and job["attempts"] == 1
        )

    return check


def _crashed(signal_name: str) -> Callable[[dict[str, Any]], bool]:
    def check(job: dict[str, Any]) -> bool:
        error = _error(job)
        return (
            error.get("type") == "WorkerCrashed"
            and f"worker process died: {signal_name}" in str(error.get("message"))
            and job["attempts"] == CRASH_RETRIES + 1
        )

    return check


EXPECTED = (
    Expect("misbehaving.timedelta", "failed", _not_json("timedelta", "/items/0"), "ResultNotJSON naming the type"),
    Expect("misbehaving.nan", "failed", _not_json("nan", ""), "ResultNotJSON, at once"),
    Expect("misbehaving.surrogate", "failed", _not_json("surrogate", ""), "ResultNotJSON, at once"),
    Expect("misbehaving.big_int", "succeeded", lambda job: job.get("result") == 2**64 + 1, "2^64 + 1, exactly"),
    Expect(
        "misbehaving.datetime",
        "succeeded",
        lambda job: job.get("result") == {"at": "2026-12-05T06:00:00+00:00"},
        "RFC 3339 text",
    ),
    Expect(
        "misbehaving.unprintable",
        "failed",
        lambda job: _error(job).get("type") == "Unprintable" and bool(_error(job).get("message")),
        "its type and a readable message",
    ),
    Expect("misbehaving.coroutine", "succeeded", lambda job: job.get("result") == "awaited", "the awaited value"),
    Expect("misbehaving.abort", "failed", _crashed("SIGABRT"), "WorkerCrashed naming SIGABRT, each crash counted"),
    Expect("misbehaving.segfault", "failed", _crashed("SIGSEGV"), "WorkerCrashed naming SIGSEGV, each crash counted"),
)


#: Jobs without retries that run 1.5 s beside the crashes.
CANARY = Expect("misbehaving.canary", "succeeded", lambda job: job.get("result") == "alive", "not charged for a crash")
CANARIES = 6


def _final(cluster: Cluster, job_id: str) -> dict[str, Any] | None:
    status, job = cluster.call("GET", f"/v1/jobs/{job_id}", timeout_s=10)
    if status != 200:
        return None
    return job if job["status"] in ("succeeded", "failed", "cancelled", "expired") else None


def misbehaving_tasks(cluster: Cluster, size: Size) -> Report:
    """Submit one job of each misbehaving task in the middle of a steady load; audit both."""
    report = Report("misbehaving tasks")
    started = time.monotonic()
    count = min(size.jobs, 400)
    load = Load(
        cluster, prefix=prefix("beside-misbehaving"), count=count, work_ms=NEIGHBOUR_WORK_MS, rate_per_s=40
    ).start()
    time.sleep(1.0)
    submitted: dict[str, tuple[Expect, float]] = {}
    # Canaries first, so some run in the processes the crashes kill: a crash they did not cause must not
    # fail them (no retries left), the fatal-error report naming the task that did.
    for expect in [CANARY] * CANARIES + list(EXPECTED):
        status, job = cluster.call("POST", "/v1/jobs", {"task": expect.task, "args": {}})
        if status != 202:
            report.violations.append(f"{expect.task}: submit answered {status}: {job}")
            continue
        submitted[job["id"]] = (expect, time.monotonic())
        if expect is not CANARY:
            report.fault(f"{expect.task}: expected {expect.status}, {expect.what}")
    took: dict[str, float] = {}
    deadline = time.monotonic() + 90
    waiting = dict(submitted)
    while waiting and time.monotonic() < deadline:
        for job_id, (expect, sent) in list(waiting.items()):
            job = _final(cluster, job_id)
            if job is None:
                continue
            del waiting[job_id]
            took[expect.task] = max(took.get(expect.task, 0.0), time.monotonic() - sent)
            if job["status"] != expect.status or not expect.check(job):
                report.violations.append(
                    f"{expect.task} ended {job['status']}: {job.get('error') or job.get('result')}"
                )
        time.sleep(0.2)
    for expect, _ in waiting.values():
        report.violations.append(f"{expect.task}: not final within 90s")
    status, listing = cluster.call("GET", "/v1/jobs?limit=100", timeout_s=10)
    if status != 200:
        report.violations.append(f"the job listing answered {status} with the misbehaving jobs in it: {listing}")
    load.join()
    report.submitted = len(load.submissions) + len(EXPECTED) + CANARIES
    report.accepted = len(load.accepted()) + len(submitted)
    report.answers = load.answers()
    report.violations.extend(load.violations())
    neighbours = [s.job_id for s in load.accepted() if s.job_id]
    audit(cluster, report, neighbours, settle_timeout_s=size.settle_s)
    waits = _neighbour_waits(cluster, load)
    if waits:
        report.recovery_s = max(waits)
        report.recovery_what = "longest wait of a job beside them, from its acceptance to its end, less its own work"
        slow = sum(1 for w in waits if w > 1.0)
        report.notes.append(f"{slow} of {len(waits)} jobs beside them waited more than 1 s")
    report.notes.append("each misbehaving job final after: " + ", ".join(f"{t} {s:.1f}s" for t, s in took.items()))
    report.runtime_s = time.monotonic() - started
    return report


def _neighbour_waits(cluster: Cluster, load: Load) -> list[float]:
    accepted = {s.job_id: s.accepted_at for s in load.accepted() if s.job_id and s.accepted_at}
    rows = job_rows(cluster, accepted)
    waits = []
    for job_id, at in accepted.items():
        ended = epoch(getattr(rows.get(job_id), "finished_at", None))
        if ended is not None and at is not None:
            waits.append(max(0.0, ended - at - NEIGHBOUR_WORK_MS / 1000))
    return waits
