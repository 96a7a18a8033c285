"""The long form of the fault-injection suite: every scenario at full size, then docs/reliability.md.

Runs the scenarios of ``tests/reliability`` (the same code the fast form in
``make test`` runs, at ``LONG`` size: 2,000 jobs, 20 kills, 10 s outages),
each on a fresh cluster of real processes, plus the PostgreSQL variant when
a server answers at ``TEST_DATABASE_URL``, and the API fuzzed from its
OpenAPI document and from raw bytes (``tests/e2e/fuzz.py``) with a larger
budget than ``make test`` gives it. Prints every report, writes
docs/reliability.md and exits 1 when any scenario found a violation.

    python -m bench.chaos                      # everything (make chaos)
    python -m bench.chaos --only kill9,redis   # some scenarios
    python -m bench.chaos --jobs 500 --outage-s 5
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, make_url, text

from bench.report import machine
from bench.soak import keep_soak_section
from tests.disk import CannotMount
from tests.e2e.api_server import ApiServer
from tests.e2e.fuzz import FuzzRun, openapi_fuzz, raw_fuzz
from tests.reliability.api_faults import bad_input, security, slow_client_capacity
from tests.reliability.audit import Report
from tests.reliability.cluster import Cluster
from tests.reliability.disk_full import disk_full, disk_size
from tests.reliability.misbehaving import TASK_MODULES as MISBEHAVING_MODULES
from tests.reliability.misbehaving import misbehaving_tasks
from tests.reliability.poison import poison, stuck_tasks
from tests.reliability.proxy import TcpProxy
from tests.reliability.scenarios import LONG, Size, redis_faults, restarts, store_lock, store_unreachable, worker_kills
from tests.reliability.static import bandit_findings, bandit_section, string_built_sql, unexplained
from tests.reliability.store_stalls import store_stalls

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "reliability.md"
PG_ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")

Run = Callable[[Cluster, Size], list[Report]]
#: name -> what runs on one fresh cluster.
RUNS: dict[str, Run] = {
    "kill9": lambda c, s: [worker_kills(c, s)],
    "restarts": lambda c, s: [restarts(c, s)],
    "redis": lambda c, s: [redis_faults(c, s)],
    "redis-crash": lambda c, s: [redis_faults(c, s, crash=True)],
    "sqlite": lambda c, s: [store_lock(c, s)],
    "poison": lambda c, s: [poison(c, s), stuck_tasks(c, s)],
    "api": lambda c, s: [bad_input(c), slow_client_capacity(c), security(c)],
    "disk": lambda c, s: [disk_full(c, s)],
    "misbehaving": lambda c, s: [misbehaving_tasks(c, s)],
}
#: The runs that set up their own stores: PostgreSQL's outage and stalls, the API fuzzed on both stores.
EXTRA_RUNS = ("postgres", "postgres-stall", "fuzz")
#: name -> the cluster options a run needs beyond the defaults.
CLUSTER_OPTIONS: dict[str, Callable[[Size], dict[str, Any]]] = {
    "disk": lambda s: {"data_disk": disk_size(s)},
    "misbehaving": lambda s: {"env": {**s.env, "TASK_MODULES": MISBEHAVING_MODULES}},
}


@contextlib.contextmanager
def postgres_database() -> Iterator[str | None]:
    """A database of its own on the local PostgreSQL (dropped after), or None when none answers."""
    try:
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 2})
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception:
        yield None
        return
    name = f"jobrelay_chaos_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def run_postgres(size: Size, *, stalls: bool = False) -> list[Report]:
    """A PostgreSQL fault through a proxy (SQLite cannot be made unreachable): its connections cut, or
    (``stalls``) its jobs table locked, its traffic held and its packets lost, one after the other."""
    scenario = "SQL store stalled (PostgreSQL)" if stalls else "SQL store unreachable (PostgreSQL connections cut)"
    with postgres_database() as name:
        if name is None:
            report = Report(scenario)
            report.notes.append(f"not run: no PostgreSQL answered at {make_url(PG_ADMIN_URL).render_as_string()}")
            return [report]
        admin = make_url(PG_ADMIN_URL)
        proxy = TcpProxy(admin.host or "127.0.0.1", admin.port or 5432).start()
        url = admin.set(host="127.0.0.1", port=proxy.port, database=name).render_as_string(hide_password=False)
        direct = create_engine(admin.set(database=name))
        try:
            with (
                tempfile.TemporaryDirectory(prefix="jobrelay-chaos-") as tmp,
                Cluster(Path(tmp), database_url=url, env=size.env) as cluster,
            ):
                if stalls:
                    return [store_stalls(cluster, size, proxy, direct)]
                return [store_unreachable(cluster, size, proxy)]
        finally:
            proxy.close()
            direct.dispose()


#: The fuzz budget per store: examples per operation and mode (schemathesis), raw requests (hypothesis).
FUZZ_OPENAPI_EXAMPLES = 100
FUZZ_RAW_EXAMPLES = 5000


def run_fuzz() -> list[Report]:
    """Both fuzz runs against the API alone (no worker runs what they submit), on SQLite and on PostgreSQL."""
    reports = []
    with tempfile.TemporaryDirectory(prefix="jobrelay-fuzz-") as tmp, postgres_database() as name:
        stores = {"SQLite": f"sqlite:///{tmp}/jobs.db"}
        if name is not None:
            stores["PostgreSQL"] = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
        for store, url in stores.items():
            server = ApiServer(Path(tmp) / store, url)
            try:
                server.start()
                for run in (
                    openapi_fuzz(server, examples=FUZZ_OPENAPI_EXAMPLES),
                    raw_fuzz(server, examples=FUZZ_RAW_EXAMPLES),
                ):
                    reports.append(_fuzz_report(run, store))
            finally:
                server.stop()
    return reports


def _fuzz_report(run: FuzzRun, store: str) -> Report:
    report = Report(f"API fuzz on {store}: {run.what}")
    report.fault(f"{run.requests} generated requests, valid and not (tests/e2e/fuzz.py)")
    report.submitted = run.requests
    report.accepted = sum(count for status, count in run.answers.items() if 200 <= status < 300)
    report.answers.update({str(status or "no answer"): count for status, count in run.answers.items()})
    report.notes.append(f"checked: no 5xx, no row stored for a refusal, /healthz (asked {run.health_checks} times)")
    report.violations.extend(run.problems)
    report.runtime_s = run.runtime_s
    return report


def run_on_cluster(name: str, size: Size) -> list[Report]:
    """``RUNS[name]`` on a fresh cluster; a "not run" report when its cluster cannot be had here."""
    options = {"env": size.env, **CLUSTER_OPTIONS.get(name, lambda _size: {})(size)}
    try:
        with (
            tempfile.TemporaryDirectory(prefix="jobrelay-chaos-") as tmp,
            Cluster(Path(tmp), **options) as cluster,
        ):
            return RUNS[name](cluster, size)
    except CannotMount as exc:
        report = Report(name)
        report.notes.append(f"not run: {exc}")
        return [report]


def run_fast_form() -> tuple[float, int]:
    """Time the fast form (pytest tests/reliability) on this machine: (seconds, exit code)."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/reliability"], cwd=REPO, check=False)
    return time.monotonic() - started, done.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help=f"comma-separated, out of {', '.join([*RUNS, *EXTRA_RUNS])}")
    parser.add_argument("--jobs", type=int, default=LONG.jobs)
    parser.add_argument("--kills", type=int, default=LONG.kills)
    parser.add_argument("--outage-s", type=float, default=LONG.outage_s)
    parser.add_argument("--no-fast-form", action="store_true", help="do not time the fast form afterwards")
    args = parser.parse_args(argv)
    size = dataclasses.replace(LONG, jobs=args.jobs, kills=args.kills, outage_s=args.outage_s)
    chosen = [name for name in args.only.split(",") if name] or [*RUNS, *EXTRA_RUNS]
    started = time.monotonic()
    reports: list[Report] = []
    for name in chosen:
        print(f"== {name}", flush=True)
        if name == "postgres":
            found = run_postgres(size)
        elif name == "postgres-stall":
            found = run_postgres(size, stalls=True)
        elif name == "fuzz":
            found = run_fuzz()
        else:
            found = run_on_cluster(name, size)
        for report in found:
            print(report.summary(), flush=True)
        reports.extend(found)
    findings = bandit_findings()
    write_doc(reports, size, time.monotonic() - started, findings=len(findings), fast=None)
    fast = None if args.no_fast_form else run_fast_form()
    write_doc(reports, size, time.monotonic() - started, findings=len(findings), fast=fast)
    failed = [r for r in reports if r.violations or r.lost or r.duplicates]
    print(f"wrote {DOC.relative_to(REPO)}; {len(failed)} scenario(s) with violations", flush=True)
    return 1 if failed or unexplained(findings) or string_built_sql() or (fast and fast[1]) else 0


def _cell(report: Report) -> str:
    if report.recovery_s is None:
        return "n/a"
    return f"{report.recovery_s:.2f} s ({report.recovery_what})"


def write_doc(
    reports: list[Report], size: Size, runtime_s: float, *, findings: int, fast: tuple[float, int] | None
) -> None:
    rows = [
        f"| {r.scenario} | {r.submitted} | {len(r.faults)} | {r.lost} | {r.duplicates} | {_cell(r)} |" for r in reports
    ]
    details = []
    for r in reports:
        faults = r.faults if len(r.faults) <= 8 else [*r.faults[:6], f"... and {len(r.faults) - 6} more like these"]
        answers = ", ".join(f"{count} x {answer}" for answer, count in sorted(r.answers.items())) or "none"
        details.append(f"### {r.scenario}\n")
        details.append(f"Accepted {r.accepted} of {r.submitted}; answers: {answers}; raw re-runs {r.reruns}; "
                       f"{r.runtime_s:.0f} s.\n")  # fmt: skip
        details.extend(f"- fault: {f}" for f in faults)
        details.extend(f"- {n}" for n in r.notes)
        details.extend(f"- **violation**: {v}" for v in r.violations[:20])
        details.append("")
    settings = ", ".join(f"`{k}={v}`" for k, v in size.env.items()) or "the defaults (README: Settings)"
    fast_line = (
        f"The fast form last took {fast[0]:.0f} s here (exit code {fast[1]})."
        if fast
        else "The fast form was not timed in this run."
    )
    DOC.parent.mkdir(parents=True, exist_ok=True)
    previous = DOC.read_text() if DOC.exists() else ""
    DOC.write_text(
        f"""# Reliability: the fault-injection suite

Written by `python -m bench.chaos` (`make chaos`). Each scenario starts the real processes (gunicorn API,
the worker supervisor with 2 processes x 4 threads, two schedulers) against a private `redis-server` with
AOF and a SQL store, submits `reliability.effect` jobs over HTTP whose effects are recorded outside Redis
and the store (`tests/reliability/effect.py`), injects its fault and audits the end state
(`tests/reliability/audit.py`): every accepted job (202) final exactly once, no run of a job after it was
final and no attempt run twice, one effect per succeeded job, no row for a request that was not accepted,
nothing left in Redis.

The same scenarios run small in `make test` (`tests/reliability`, a few hundred jobs, 3 s outages).
{fast_line} This run: {size.jobs} jobs per load, {size.kills} kills, {size.outage_s:g} s outages, cluster settings
{settings}; {runtime_s:.0f} s in all. Machine: {machine()}.

| scenario | jobs submitted | faults injected | jobs lost | duplicates of finished jobs | recovery time |
| --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

A *re-run* (in the details) is a raw execution beyond the one that finished the job: the at-least-once
half of the contract (a worker killed mid-job runs it again elsewhere); the effect stays single because it is
idempotent, as user tasks must be. A *duplicate* would be a run that exactly-once completion forbids.

## Details

{chr(10).join(details)}
## What the suite found, and what changed

- **An undecodable message stranded its neighbours.** Dramatiq raises out of its Redis consumer on a payload
  it cannot decode (Bogdanp/dramatiq#375); the consumer restarted and every message prefetched with the payload
  stayed in the live worker's ack set, never run, until the process died, when the payload came back and did it
  again (30 of 30 neighbours lost in the poison scenario). The worker's consumer (`services/worker/consumer.py`)
  now dead-letters the payload and goes on.
- **A retry sent while Redis was down was lost.** The row said `retrying`, the message for the next attempt
  failed to enqueue, Dramatiq logged the error and acked the current message: 6 of 300 jobs stayed `retrying`
  for good in the Redis scenario. The worker now waits for Redis before it acks, as it waits for the store
  (`deliver` in `services/worker/outages.py`, called by `services/worker/middleware/outcomes.py`).
- **A Redis blip stranded every delayed message a worker held.** After a connection error Dramatiq's consumer
  thread resets its in-memory delay queue and starts a new consumer; the ids of the delayed messages (retries
  waiting out their backoff, jobs with `delay_s` or `eta`) stayed in the live worker's ack set, recovered
  only when the process died or looked dead for `WORKER_DEAD_AFTER_S`. A shorter outage left those jobs
  `retrying` or `scheduled` for good (14 of 300 in the fast form; 100 of 100 in a targeted run with 2 s of
  Redis away). A new delay-queue consumer now puts its own unacked messages back first
  (`services/worker/consumer.py`).
- **A result that could not be stored left its job `running` forever.** An error from result storage (disk
  full, bucket away) escaped the status middleware after the task returned; Dramatiq logged it and acked the
  message. The attempt now fails like any other (`services/worker/middleware/results.py`, `outcomes.py`), retried or
  dead-lettered, and an operator's retry stores the result once there is space.
- **One young crashing worker process paused the recovery of the others.** The supervisor slept its 5 s
  crash-loop pause inline, so every other dead process waited 5 s per slot before its messages went back;
  with 8 processes killed at once the last would have taken 35 s, past the 20 s rule. The pause is now per
  slot (`services/worker/supervisor.py`).
- **`1e999` was accepted as infinity.** JSON numbers out of float range became `inf`, stored and echoed back as
  the non-JSON token `Infinity` (PostgreSQL refuses it outright). `services/api/body.py` now answers 400.
- **A Redis crash could lose messages of accepted jobs.** In one long run with SIGKILLs of Redis, 3 jobs
  accepted within a millisecond of a kill stayed `queued`: their rows were marked published and their
  messages were in no queue, ack set or message hash. With `appendfsync everysec` Redis answers writes it
  has not yet written to its AOF, so a crash loses them, and the outbox relay only sends rows that were
  never published. The scheduler leader now runs `maintenance.reconcile` every 30 s
  (`services/scheduler/reconcile.py`): a waiting job older than a minute whose message is in no queue of Redis on two
  runs in a row, its row unchanged, is published again (the worker's claim skips any duplicate), counted
  in `jobrelay_jobs_republished_total`.
- **A locked SQLite store made submissions wait 30 s.** A lock held by another program made writes wait
  out SQLite's busy timeout. Writes now give up after `STORE_TIMEOUT_S` (5 s), on SQLite's lock and on the
  store's own write lock, and the API answers 503 (`shared/store/engine.py`).
- **Sustained kills kept capacity down.** Every replacement process killed young waited out a 5 s
  crash-loop pause, so jobs interrupted by a kill waited up to a minute for a process (none was lost). A
  slot now restarts at once after one young death and backs off (1 s, 2 s, 4 s, ... 30 s) only after more
  in a row (`services/worker/supervisor.py`).
- **A chunked body read as empty.** Falcon's `bounded_stream` needs a Content-Length; a body sent with
  `Transfer-Encoding: chunked` is now read from the server's decoded stream, within the size limit
  (`services/api/body.py`).
- **A silent PostgreSQL connection could hang a worker.** A network path that drops packets rather than
  closing left the status writer in `COMMIT` for as long as the kernel kept the socket. Connections now
  carry libpq keepalives, a connect timeout and `tcp_user_timeout` (30 s), so such a call fails and the
  worker pauses and tries again (`shared/store/engine.py`).
- **A 1 MiB body of 60,000 unknown arguments answered a 4 MB 422.** A problem now lists the first 100
  errors and says how many there were.
- **A worker skipped jobs it had claimed itself.** Two fast-form runs, while claims ahead were being
  built (hung task; SQLite locked), left jobs `running` under a live worker's lease for good, never run:
  the worker had claimed them without knowing (claims of one group, answered with an error after part of
  it committed), claimed each again at its start, saw its own live lease and skipped the message as a
  duplicate. A group of claims now
  commits as one, and a claim that finds the job under this worker's own lease (`OWNED`) runs it, unless
  a thread or a claim ahead of this worker already has it or its attempt just ended here
  (`shared/store/attempts.py`, `services/worker/middleware/claims.py`).
- **Gunicorn answered 501 to an empty `Transfer-Encoding`.** Schemathesis sent `Transfer-Encoding:` with
  no value; gunicorn refused it before the application with a 501 in HTML. Requests gunicorn refuses are
  now answered in problem+json, an unreadable transfer coding with a 400, and every operation documents
  its 400 (`services/api/gunicorn_worker.py`).
- **A full disk killed the API's workers.** With `DATA_DIR` on a full 2 MB tmpfs, every gunicorn worker
  that wrote a new metric series died of SIGBUS, and so did each one started in its place: prometheus_client
  grows its memory-mapped multiprocess files with `truncate` (sparse) and writes into the map, and a page
  with no room behind it faults. `/healthz` and reads went unanswered while `/readyz` said ready (its
  `SELECT 1` reads). Metric files now get their space (`posix_fallocate`) before they are mapped; a series
  with no room stays in memory, is counted in `jobrelay_metrics_unsaved_series_total` and written once there
  is room (`shared/metric_files.py`). SQLite's -shm was never the cause: SQLite writes each of its pages
  before mapping it, and a full disk is `SQLITE_IOERR_SHMSIZE`. A write that finds no room is a store
  that is down (503); `/readyz` answers 503 (`store: DiskFull`) while a write of the process failed for
  lack of room or the store's disk has under 64 KiB free (`shared/store/disk_space.py`). On a disk
  smaller than SQLite's 4 MB checkpoint threshold the WAL took all the room its own checkpoint needed,
  and no write succeeded again even after space was freed; the WAL is now checkpointed and truncated
  once the free space is below three times its size. The outbox relay sent the jobs of an entry it could not
  delete again at every tick (in the reported run a job ran twice, then stayed `running`); it now
  records what it sent before sending more (`services/scheduler/relay.py`). The scenario keeps the disk
  full while clients submit (`tests/reliability/disk_full.py`).
- **A task that killed its process ran again and again, never dead-lettered.** A task that calls
  `os.abort()` or crashes in C code ends its worker process before any outcome hook runs; the supervisor
  released its lease and put its message back at the front of its queue with no attempt counted: with
  `max_retries=2` it ran 16 times in 100 s. Each worker process now marks, in
  `$DATA_DIR/held-jobs/<worker id>`, the jobs its threads are inside and the ones it claimed ahead
  (`services/worker/held_jobs.py`). When a process dies of a signal or of an exit code other
  than 0 (and was not killed by its supervisor for a limit, which counts only the jobs it was killed for),
  the supervisor records each attempt it died under by the task's retry policy: `retrying` after its backoff
  with a new message (the old one is dropped, so it cannot run before its time), or `failed` and
  dead-lettered, with the error `WorkerCrashed`, `worker process died: SIGABRT` (or `exit code 3`). That
  counts for every job its threads were running, since none can tell which one killed it: a task that may
  crash its process is best given a queue and workers of its own. Its claims ahead go back uncounted, and
  its slot restarts at once
  (`services/worker/crashes.py`), so one job's crash loop costs the jobs beside it one process restart each
  time (`tests/services/worker/test_supervisor.py`: dead-lettered after 3 attempts, no neighbour waited 3 s).
  Nothing stays `running` for good either: the scheduler leader's `maintenance.sweep` (every 30 s,
  `services/scheduler/sweeper.py`) ends running rows whose lease expired over a minute ago, whose worker has
  no live heartbeat and whose message is in no queue, delay queue or ack set, by the same policy (or
  `cancelled` when a cancel was asked), counted in `jobrelay_jobs_swept_total`
  (`tests/services/scheduler/test_sweeper.py` plants each way a row is orphaned).

Still open:

- The worker's heartbeat thread beats while its status writer waits on the store, so during a store
  outage its prefetched messages stay with it (they run when the store is back; none is lost). Tying the
  heartbeat to the writer's progress would let another worker take them, but would also requeue every
  worker's messages in a store-wide outage.
- Gunicorn's gevent workers read each slow body in a greenlet of their own, up to 1,000 connections per
  worker, but a request's CPU work (a 1,000-job batch takes tens of milliseconds) holds its worker's
  event loop while it runs, and a keep-alive client stays on one worker. Run the API behind a proxy that
  buffers request bodies (ingress-nginx does by default).
- A 1 MiB body of 60,000 unknown arguments still costs about a second of CPU to check.
- **Redis restarts stopped a worker's retries and delayed jobs for good** (issue: a Redis restart at the
  wrong moment). A worker's consumer thread of a delay queue enqueues each due message itself;
  `do_enqueue` let a raw `redis.ConnectionError` out, which Dramatiq's consumer thread takes for an
  unexpected error: it closes its consumer, whose requeue of the delayed messages it holds failed too,
  and the thread ended. The process stayed up and ready with no consumer of `default.DQ`: no retry and
  no delayed job of `default` ran in it again. `redis.TimeoutError` (a stalled socket) took the same path
  on every call, since Dramatiq maps only `ConnectionError` (Bogdanp/dramatiq#894). Now the enqueue
  (`shared/broker/waking.py`), ack, nack, requeue and fetch (`services/worker/consumer.py`,
  `connection_lost`) raise Dramatiq's `ConnectionClosed` for both, which the thread survives by
  reconnecting (the new consumer puts the delay queue's ack set back first). A consumer thread that ends
  anyway is started again by the heartbeat (`services/worker/consumer_watch.py`), counted in
  `jobrelay_worker_consumer_restarts_total`, and the worker's probes fail while
  `$DATA_DIR/consumers-down.<pid>` is fresh. Deterministic tests: `tests/services/worker/test_consumer.py`
  (a Redis client that refuses the exact enqueue, then the requeue: fails on 56f3f81),
  `test_process.py` (a retry's publish refused twice, an ack batch refused), `test_consumer_watch.py`.
- **A job left `running` with its message gone.** When Redis lost a running job's message (SIGKILL, or
  a publish lost with the connection), the outbox relay or the lost-message reconcile published it again;
  a second thread of the same worker took that delivery, found the row running under its own lease and
  skipped it as a duplicate, and the skip hook removed the running entry by job id: the entry of the
  first thread, still inside the task. When the task ended, the status hook found no entry, recorded
  nothing, and Dramatiq acked the message: the row stayed `running` with no message anywhere, its lease
  no longer renewed by anyone. The intent was in the store all along; the loss was the worker forgetting
  its own attempt. The skip hook now removes only the attempt of its own thread
  (`services/worker/middleware/claims.py`, `after_skip_message`); the deterministic test
  (`test_a_duplicate_delivery_skipped_while_the_job_runs_leaves_the_running_attempt_alone`, a job held
  in its task while its duplicate is skipped) failed every time on 56f3f81 with the row `running`, and
  needs no sweeper of `running` rows.

## Static checks

`bandit -r shared services` ({findings} findings, all low severity) is part of the fast form; every finding
must be listed here with the reason it is accepted, or the test fails:

{bandit_section()}

SQL is built only through SQLAlchemy: a test walks the syntax trees of `shared/` and `services/` for
`text()`, `execute()`, `executemany()`, `executescript()` and `exec_driver_sql()` called with an f-string,
`%`-formatting, `.format()` or concatenation, and finds none.
"""
    )
    # The soak table (`make soak`) is written by bench/soak.py; it stays.
    keep_soak_section(previous)


if __name__ == "__main__":
    sys.exit(main())
