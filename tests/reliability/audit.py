"""The end-of-scenario audit: every accepted job final once, no effect twice, Redis left clean.

Reads the job store and the effects file directly (not through the API), so
a fault in the API cannot hide anything, and compares:

- every accepted job reached a final state (``lost`` otherwise), the state
  the scenario expects, and kept it (read twice, a while apart);
- the effects file: one effect per succeeded job; no raw run that started
  after its job was final, no attempt that ran twice (``duplicates``);
- no job row and no effect for a request that was not accepted;
- Redis: no message left in a queue, an ack set or the messages hash.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis
from dramatiq import Message
from dramatiq.errors import DecodeError
from sqlalchemy import select

from shared.job import FINAL_STATUSES
from shared.store.models import jobs
from tests.reliability.cluster import Cluster
from tests.reliability.effects_db import connect

_FINAL = {status.value for status in FINAL_STATUSES}
#: Clock slack when comparing a run's start (the task's clock) with ``finished_at`` (the worker's).
_SLACK_S = 0.002


@dataclass
class Report:
    """What one scenario did and found; the long form writes these into docs/reliability.md."""

    scenario: str
    submitted: int = 0
    accepted: int = 0
    faults: list[str] = field(default_factory=list)
    lost: int = 0
    duplicates: int = 0
    reruns: int = 0
    recovery_s: float | None = None
    recovery_what: str = ""
    answers: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    runtime_s: float = 0.0

    def fault(self, description: str) -> None:
        self.faults.append(description)

    def summary(self) -> str:
        recovery = f"{self.recovery_s:.2f}s ({self.recovery_what})" if self.recovery_s is not None else "n/a"
        lines = [
            f"{self.scenario}: submitted {self.submitted}, accepted {self.accepted}, faults {len(self.faults)}, "
            f"lost {self.lost}, duplicates {self.duplicates}, re-runs {self.reruns}, recovery {recovery}, "
            f"answers {dict(self.answers)}",
            *(f"  fault: {f}" for f in self.faults),
            *(f"  note: {n}" for n in self.notes),
            *(f"  VIOLATION: {v}" for v in self.violations[:40]),
        ]
        return "\n".join(lines)


def job_rows(cluster: Cluster, job_ids: Iterable[str]) -> dict[str, Any]:
    """The rows of these jobs, by id, in chunks small enough for any SQL backend."""
    ids = list(job_ids)
    found: dict[str, Any] = {}
    assert cluster.engine is not None
    with cluster.engine.connect() as conn:
        for start in range(0, len(ids), 500):
            query = select(
                jobs.c.id,
                jobs.c.status,
                jobs.c.attempts,
                jobs.c.finished_at,
                jobs.c.dead,
                jobs.c.error,
                jobs.c.idempotency_key,
            ).where(jobs.c.id.in_(ids[start : start + 500]))
            for row in conn.execute(query):
                found[row.id] = row
    return found


def settle(cluster: Cluster, job_ids: list[str], *, timeout_s: float) -> tuple[dict[str, Any], float]:
    """Wait (bounded) until every job is final; returns the rows and the wall time when that happened."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = job_rows(cluster, job_ids)
        if all(job_id in rows and rows[job_id].status in _FINAL for job_id in job_ids):
            return rows, time.time()
        if time.monotonic() > deadline:
            return rows, time.time()
        time.sleep(0.1)


def epoch(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


def audit(
    cluster: Cluster,
    report: Report,
    job_ids: list[str],
    *,
    expect: str = "succeeded",
    refused_keys: Iterable[str] = (),
    settle_timeout_s: float = 60.0,
    check_redis: bool = True,
) -> tuple[dict[str, Any], float]:
    """Check the invariants for ``job_ids``; append what is wrong to ``report.violations``.

    Returns the settled rows and the wall time when the last job became final.
    """
    rows, settled_at = settle(cluster, job_ids, timeout_s=settle_timeout_s)
    not_final = [job_id for job_id in job_ids if job_id not in rows or rows[job_id].status not in _FINAL]
    report.lost += len(not_final)
    where = locate_messages(cluster, not_final[:20])
    for job_id in not_final[:20]:
        state = rows[job_id].status if job_id in rows else "missing"
        report.violations.append(
            f"job {job_id} is {state} {settle_timeout_s:.0f}s after the scenario (lost); "
            f"its message: {where.get(job_id, 'nowhere in Redis')}"
        )
    wrong = [job_id for job_id in job_ids if job_id in rows and rows[job_id].status in _FINAL - {expect}]
    report.lost += len(wrong)
    for job_id in wrong[:20]:
        report.violations.append(f"job {job_id} ended {rows[job_id].status}, not {expect}: {rows[job_id].error}")

    refused = list(refused_keys)
    if refused:
        assert cluster.engine is not None
        with cluster.engine.connect() as conn:
            stored = conn.execute(select(jobs.c.id).where(jobs.c.idempotency_key.in_(refused))).all()
        for row in stored:
            report.violations.append(f"job {row.id} was stored for a request that was never accepted")

    _check_effects(cluster, report, rows, job_ids, expect=expect)
    # Read again a moment later: a final state must not change (no late duplicate may reopen a job).
    time.sleep(0.5)
    again = job_rows(cluster, job_ids)
    for job_id, row in rows.items():
        later = again.get(job_id)
        if row.status in _FINAL and (later is None or (later.status, later.attempts) != (row.status, row.attempts)):
            report.duplicates += 1
            report.violations.append(f"job {job_id} changed after it was final: {row.status} -> {later}")
    if check_redis:
        _check_redis_clean(cluster, report)
    return rows, settled_at


def _check_effects(cluster: Cluster, report: Report, rows: dict[str, Any], job_ids: list[str], *, expect: str) -> None:
    wanted = set(job_ids)
    conn = connect(cluster.effects_db)
    try:
        executions = [r for r in conn.execute("SELECT job_id, attempt, started FROM executions") if r[0] in wanted]
        effects = [r[0] for r in conn.execute("SELECT job_id FROM effects") if r[0] in wanted]
    finally:
        conn.close()
    per_attempt = Counter((job_id, attempt) for job_id, attempt, _ in executions)
    for (job_id, attempt), count in per_attempt.items():
        if count > 1:
            report.duplicates += count - 1
            report.violations.append(f"job {job_id} attempt {attempt} ran {count} times")
    for job_id, attempt, started in executions:
        row = rows.get(job_id)
        finished = epoch(row.finished_at) if row is not None else None
        if finished is not None and started > finished + _SLACK_S:
            report.duplicates += 1
            report.violations.append(
                f"job {job_id} ran again (attempt {attempt}) {started - finished:.3f}s after it was final"
            )
    succeeded = {job_id for job_id in wanted if job_id in rows and rows[job_id].status == "succeeded"}
    effected = set(effects)
    for job_id in sorted(succeeded - effected)[:20]:
        report.violations.append(f"job {job_id} succeeded without its effect")
    if expect == "succeeded":
        for job_id in sorted(effected - succeeded)[:20]:
            report.violations.append(f"job {job_id} has an effect but is {rows.get(job_id)}")
    report.reruns += max(0, len(executions) - len(succeeded))


def locate_messages(cluster: Cluster, job_ids: list[str]) -> dict[str, str]:
    """Where in Redis the messages of these jobs are (which hash, and which list or set holds their id)."""
    if not job_ids:
        return {}
    wanted, found = set(job_ids), {}
    client = cluster.redis_client()
    try:
        holders = [
            key
            for key in client.scan_iter(match="dramatiq:*", count=1000)
            if client.type(key) in (b"list", b"set", b"zset")
        ]
        for key in client.scan_iter(match="dramatiq:*.msgs", count=1000):
            stored: dict[bytes, bytes] = client.hgetall(key)  # type: ignore[assignment]
            for redis_id, data in stored.items():
                with contextlib.suppress(DecodeError):
                    job_id = Message.decode(data).message_id
                    if job_id in wanted:
                        held = [h.decode() for h in holders if _holds(client, h, redis_id)]
                        found[job_id] = f"in {key.decode()}, id held by {held or 'no list or set'}"
    finally:
        client.close()
    return found


def _holds(client: redis.Redis, key: bytes, member: bytes) -> bool:
    kind = client.type(key)
    if kind == b"set":
        return bool(client.sismember(key, member))
    if kind == b"zset":
        return client.zscore(key, member) is not None
    return member in client.lrange(key, 0, -1)  # type: ignore[operator]


def _check_redis_clean(cluster: Cluster, report: Report, *, timeout_s: float = 10.0) -> None:
    """After the last final write every message is acked within moments: nothing may stay behind."""
    client = cluster.redis_client()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            left = {}
            for key in client.scan_iter(match="dramatiq:*", count=1000):
                name = key.decode()
                # Dead letters stay by design; the heartbeats and the worker descriptions (the console's
                # overview, ``shared/broker/workers.py``) are the live workers', not messages.
                if name.endswith((".dead", ".dead.msgs", ".XQ", ".XQ.msgs", "__heartbeats__", "__workers__")):
                    continue
                kind = client.type(key).decode()
                size = {"list": client.llen, "set": client.scard, "hash": client.hlen, "zset": client.zcard}.get(
                    kind, lambda _k: 0
                )(key)
                if size:
                    left[name] = size
            if not left:
                return
            if time.monotonic() > deadline:
                report.violations.append(f"messages left in Redis after every job was final: {left}")
                return
            time.sleep(0.2)
    finally:
        client.close()
