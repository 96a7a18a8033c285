"""A PostgreSQL that stalls under load: its jobs table locked, its traffic held, its packets lost.

The scenario behind ``make chaos``'s "SQL store stalled" line. Clients keep submitting through all
three faults, one after the other, each ``outage_s`` long, while a prober asks ``/readyz``
every quarter of a second: every submission is answered (202, or a 503 after about
``STORE_TIMEOUT_S`` that the client sends again with its idempotency key), ``/readyz`` answers
within a second throughout and says not ready while the store cannot answer, and the audit finds
every accepted job final exactly once once the store is back. ``test_store_stalls.py`` checks
each fault's answers one by one; this is the same faults under a steady load.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from sqlalchemy import Engine, text

from tests.reliability.audit import Report, audit
from tests.reliability.cluster import Cluster
from tests.reliability.load import Load
from tests.reliability.proxy import TcpProxy
from tests.reliability.scenarios import Size, finished_after, prefix, sleep_until

#: What /readyz may take at most, by its contract (0.8 s) and a busy machine's slack.
READY_WITHIN_S = 1.5
#: The faults, in the order they are planted.
LOCK, STALL, BLACK_HOLE = "jobs table locked", "traffic held", "packets lost"


@dataclass
class ReadyProbe:
    """Asks ``/readyz`` every ``interval_s`` from its own thread; remembers each answer under the fault it fell in."""

    cluster: Cluster
    interval_s: float = 0.25
    fault: str = "none"
    answers: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> ReadyProbe:
        threading.Thread(target=self._run, name="ready-probe", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            fault, asked = self.fault, time.monotonic()
            try:
                status, _ = self.cluster.call("GET", "/readyz", token=None, timeout_s=10)
            except OSError:
                status = 0
            self.answers.setdefault(fault, []).append((status, time.monotonic() - asked))

    def slowest_s(self) -> float:
        return max((took for answers in self.answers.values() for _, took in answers), default=0.0)

    def not_ready(self, fault: str) -> tuple[int, int]:
        """How many of the answers during ``fault`` said not ready, of how many."""
        answers = self.answers.get(fault, [])
        return sum(1 for status, _ in answers if status == 503), len(answers)


def store_stalls(cluster: Cluster, size: Size, proxy: TcpProxy, direct: Engine) -> Report:
    """Lock, stall and black-hole PostgreSQL (``direct`` reaches it past ``proxy``) while clients submit."""
    report = Report("SQL store stalled (PostgreSQL table locked, traffic held, packets lost)")
    started = time.monotonic()
    span_s = 3 * size.outage_s + 8.0
    load = Load(
        cluster,
        prefix=prefix("stall"),
        count=size.jobs,
        work_ms=size.work_ms,
        rate_per_s=size.jobs / span_s,
        request_timeout_s=size.outage_s + 40,
    ).start()
    probe = ReadyProbe(cluster).start()
    try:
        sleep_until(load.started + 1.0)
        probe.fault = LOCK
        with direct.connect() as holder:
            holder.execute(text(f"SET lock_timeout = '{size.outage_s + 20:g}s'"))
            holder.execute(text("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE"))
            report.fault(f"LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE for {size.outage_s:g}s")
            time.sleep(size.outage_s)
            holder.rollback()
        probe.fault = "none"
        time.sleep(2.0)
        for fault, plant in ((STALL, proxy.stall), (BLACK_HOLE, proxy.black_hole)):
            plant()
            probe.fault = fault
            report.fault(f"PostgreSQL's {fault} for {size.outage_s:g}s (through a TCP proxy)")
            time.sleep(size.outage_s)
            proxy.restore()
            probe.fault = "none"
            time.sleep(2.0)
        back = time.time()
        load.join()
    finally:
        probe.stop()
        proxy.restore()
    report.submitted, report.accepted = len(load.submissions), len(load.accepted())
    report.answers = load.answers()
    report.violations.extend(load.violations())
    job_ids = [s.job_id for s in load.accepted() if s.job_id]
    audit(cluster, report, job_ids, settle_timeout_s=size.settle_s)
    report.recovery_s = finished_after(cluster, job_ids, back)
    report.recovery_what = "from the last fault's end to the first job finished after it (workers resumed)"
    if probe.slowest_s() > READY_WITHIN_S:
        report.violations.append(f"/readyz took {probe.slowest_s():.2f}s (more than {READY_WITHIN_S:g}s)")
    for fault in (STALL, BLACK_HOLE):
        said, asked = probe.not_ready(fault)
        if asked and not said:
            report.violations.append(f"/readyz never said not ready while PostgreSQL's {fault}")
    said_lock, asked_lock = probe.not_ready(LOCK)
    report.notes.append(
        f"slowest answer to a submission {load.slowest_s():.2f}s (STORE_TIMEOUT_S, then 503 and the client's "
        f"retry); slowest /readyz {probe.slowest_s():.2f}s; /readyz not ready in "
        + ", ".join(f"{f}: {p[0]} of {p[1]}" for f, p in ((s, probe.not_ready(s)) for s in (STALL, BLACK_HOLE)))
        + f"; {LOCK} (the store answers other tables): {said_lock} of {asked_lock}"
    )
    report.runtime_s = time.monotonic() - started
    return report
