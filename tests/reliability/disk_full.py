"""Scenario 9: the disk of ``DATA_DIR`` full, under load.

The cluster runs with ``DATA_DIR`` on a small tmpfs of its own (``Cluster(data_disk=...)``):
the SQLite store with its -wal and -shm, the Prometheus metric files (memory-mapped),
results. Redis, the effects file and the logs stay outside it. A file takes every free
byte for ``outage_s`` while clients submit; then it is deleted. Required: no process dies
(SIGBUS was what killed the API's workers), a submission while nothing can be written is
answered 503, ``/readyz`` says not ready while ``/healthz`` and reads answer, and every
job accepted before, during and after runs once and finishes.
"""

from __future__ import annotations

import http.client
import time

from tests.disk import Filler
from tests.reliability.audit import Report, audit
from tests.reliability.cluster import Cluster, Http
from tests.reliability.load import NO_ANSWER, Load
from tests.reliability.scenarios import Size, drained_after, prefix, sleep_until


def disk_size(size: Size) -> str:
    """The tmpfs for a run of ``size``: 2 MB (the size the bug was found on), more when the jobs' rows need it."""
    return f"{2 + size.jobs // 500}m"


def disk_full(cluster: Cluster, size: Size) -> Report:
    """Fill ``DATA_DIR``'s disk for ``outage_s`` while clients submit, then free it."""
    report = Report("disk full (DATA_DIR on a small tmpfs)")
    started = time.monotonic()
    assert cluster.data_disk is not None, "the cluster needs DATA_DIR on a disk of its own (data_disk=...)"
    api_pids, worker_pids = set(cluster.stack.pids_of("gunicorn")), set(cluster.worker_pids())
    span_s = size.outage_s + 4.0
    load = Load(
        cluster,
        prefix=prefix("disk"),
        count=size.jobs,
        work_ms=size.work_ms,
        rate_per_s=size.jobs / span_s,
        request_timeout_s=30.0,
        fail_every=max(5, size.jobs // 30),  # some retries fall in the full disk too
    ).start()
    sleep_until(load.started + 1.0)
    probes: dict[str, list[int]] = {"/healthz": [], "/readyz": [], "/v1/jobs?limit=1": [], "/metrics": []}
    with Filler(cluster.data_dir).kept_full() as taken:
        full_at = time.monotonic()
        report.fault(
            f"DATA_DIR's {cluster.data_disk} disk kept full for {size.outage_s:g}s (a file took {taken >> 10} KiB)"
        )
        while time.monotonic() < full_at + size.outage_s:
            for path, seen in probes.items():
                seen.append(_status(cluster, path))
            time.sleep(0.25)
    freed_at = time.time()
    for path, seen in probes.items():
        # NOTE: a checkpoint of the WAL frees some room, which the filler takes again within moments:
        # a probe in between may find the store ready.
        wanted = {503, 200} if path == "/readyz" else {200}
        if not set(seen) <= wanted or (path == "/readyz" and seen.count(503) < len(seen) * 0.8):
            report.violations.append(f"GET {path} answered {seen} while the disk was full (0: no answer)")
    ready_s = _ready_again(cluster, timeout_s=30.0)
    if ready_s is None:
        report.violations.append("/readyz was not 200 within 30s of the disk having room again")
    accepted_before = [s.job_id for s in load.submissions if s.job_id and s.accepted_at and s.accepted_at < freed_at]
    load.join()
    report.submitted, report.accepted = len(load.submissions), len(load.accepted())
    report.answers = load.answers()
    report.violations.extend(load.violations())
    if report.answers[NO_ANSWER]:
        report.violations.append(f"{report.answers[NO_ANSWER]} submissions got no answer (a process died?)")
    if not report.answers["503"]:
        report.violations.append("no submission was answered 503 while the disk was full")
    rows, _ = audit(cluster, report, [s.job_id for s in load.accepted() if s.job_id], settle_timeout_s=size.settle_s)
    report.recovery_s = drained_after(rows, accepted_before, freed_at)
    report.recovery_what = "from the disk freed until every job accepted before then was final"
    _check_survivors(cluster, report, api_pids, worker_pids)
    report.notes.append(f"/readyz answered 200 again {ready_s or 0:.2f}s after the disk was freed")
    report.notes.append(f"slowest answer to a submission: {load.slowest_s():.2f}s")
    report.runtime_s = time.monotonic() - started
    return report


def _status(cluster: Cluster, path: str) -> int:
    """The status of ``GET path`` (the admin's token), 0 for no answer."""
    client = Http(cluster.api_port, timeout_s=10)
    try:
        status, _, _ = client.request("GET", path, headers={"Authorization": f"Bearer {cluster.keys.admin}"})
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        client.close()
    return status


def _ready_again(cluster: Cluster, *, timeout_s: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() < started + timeout_s:
        if _status(cluster, "/readyz") == 200:
            return time.monotonic() - started
        time.sleep(0.1)
    return None


def _check_survivors(cluster: Cluster, report: Report, api_pids: set[int], worker_pids: set[int]) -> None:
    """Every process of before the fault still runs, and none died of a signal (the API's or the worker's)."""
    for name, before, now in (
        ("API", api_pids, set(cluster.stack.pids_of("gunicorn"))),
        ("worker", worker_pids, set(cluster.worker_pids())),
    ):
        if before - now:
            report.violations.append(f"{name} processes {sorted(before - now)} died during the scenario")
    for component in (cluster.api, cluster.worker, *cluster.schedulers):
        if not component.alive():
            report.violations.append(f"{component.name} exited during the scenario")
    logs = cluster.logs_text()
    for sign in ("SIGBUS", "Bus error"):
        if sign in logs:
            report.violations.append(f"the logs say {sign!r}")
