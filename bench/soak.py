"""``make soak``: every chaos scenario that involves Redis or a worker's death, many times, on a busy machine.

A scenario that passes once can still lose a job one run in fifty (a fault landing
between two writes). Here each runs ``SOAK_RUNS`` times (default 30) at the fast
size of ``tests/reliability`` on a fresh cluster, while one busy-looping process
per core keeps the CPUs loaded, with retries and delayed jobs waiting in Redis
during every fault (the Redis scenarios' load fails some jobs on purpose, retried
after 2 s). It prints runs, violations and time per scenario and writes the table
into docs/reliability.md; exits 1 on any violation.

    SOAK_RUNS=5 python -m bench.soak --only redis,redis-crash
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.reliability.audit import Report
from tests.reliability.cluster import Cluster
from tests.reliability.scenarios import FAST, Size, redis_faults, restarts, worker_kills

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "reliability.md"
BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"

#: name -> one run of the scenario on a fresh cluster.
SCENARIOS: dict[str, Callable[[Cluster, Size], Report]] = {
    "kill9": worker_kills,
    "restarts": restarts,
    "redis": redis_faults,
    "redis-crash": lambda c, s: redis_faults(c, s, crash=True),
}
#: As in tests/reliability: a worker is declared dead after 10 s in the Redis scenarios (a Redis
#: outage must not look like every worker dying).
ENV = {name: {**FAST.env, "WORKER_DEAD_AFTER_S": "10"} if name.startswith("redis") else FAST.env for name in SCENARIOS}


@dataclass
class Tally:
    scenario: str
    seconds: list[float] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def row(self) -> str:
        spread = f"{min(self.seconds):.0f} / {statistics.median(self.seconds):.0f} / {max(self.seconds):.0f}"
        return f"| {self.scenario} | {len(self.seconds)} | {len(self.failed)} | {spread} |"


@contextmanager
def busy_cpus(count: int) -> Iterator[None]:
    """One busy-looping process per core for as long as the block runs (stopped by their PIDs)."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait(timeout=10)


def soak(name: str, runs: int) -> Tally:
    tally = Tally(name)
    for index in range(runs):
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="jobrelay-soak-") as tmp, Cluster(Path(tmp), env=ENV[name]) as cluster:
            report = SCENARIOS[name](cluster, FAST)
        tally.seconds.append(time.monotonic() - started)
        bad = bool(report.violations or report.lost or report.duplicates)
        if bad:
            tally.failed.append(report.summary())
        print(f"{name} run {index + 1}/{runs}: {'VIOLATION' if bad else 'ok'} in {tally.seconds[-1]:.0f}s", flush=True)
        if bad:
            print(report.summary(), flush=True)
    return tally


def write_doc(tallies: list[Tally], runs: int) -> None:
    """Put the soak table into docs/reliability.md (in place of the last one)."""
    block = "\n".join(
        [
            BEGIN,
            "## Soak: the Redis and worker-death scenarios, repeated",
            "",
            f"`make soak` (`SOAK_RUNS={runs}`), {FAST.jobs} jobs a run at the fast form's size, one",
            "busy-looping process per core:",
            "",
            "| scenario | runs | runs with violations | seconds a run (min / median / max) |",
            "| --- | --- | --- | --- |",
            *(t.row() for t in tallies),
            END,
        ]
    )
    keep_soak_section(block)


def keep_soak_section(block_or_doc: str) -> None:
    """Write the soak block found in ``block_or_doc`` at the end of docs/reliability.md, replacing any there.

    ``make chaos`` writes the document anew and calls this with the text it replaced.
    """
    if BEGIN not in block_or_doc:
        return
    block = block_or_doc[block_or_doc.index(BEGIN) : block_or_doc.index(END) + len(END)]
    text = DOC.read_text()
    if BEGIN in text:
        text = text[: text.index(BEGIN)].rstrip() + "\n"
    DOC.write_text(text.rstrip() + "\n\n" + block + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=int(os.environ.get("SOAK_RUNS", "30")))
    parser.add_argument("--only", default="", help=f"comma-separated, out of {', '.join(SCENARIOS)}")
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/reliability.md alone")
    args = parser.parse_args(argv)
    chosen = [name for name in args.only.split(",") if name] or list(SCENARIOS)
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    with busy_cpus(os.cpu_count() or 2):
        tallies = [soak(name, args.runs) for name in chosen]
    for tally in tallies:
        print(tally.row(), flush=True)
        for failure in tally.failed:
            print(failure, flush=True)
    if not args.no_doc:
        write_doc(tallies, args.runs)
    return 1 if any(t.failed for t in tallies) else 0


if __name__ == "__main__":
    raise SystemExit(main())
