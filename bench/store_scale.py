"""The API's read endpoints as the jobs table grows: p99 at 10k, 100k, 1M (and, with ``--with-10m``, 10M) jobs.

For each size a private PostgreSQL database (``--admin-url``, default 127.0.0.1:5432
with trust auth) is filled by ``bench/store_fill.py`` (one ``INSERT ... SELECT FROM
generate_series`` per million rows: a week of time-ordered jobs, 7 tasks on 4 queues,
96.5% succeeded, 2% failed of which 1.5 points dead letters, 1% cancelled, 0.5%
expired, the newest 2,000 waiting or running, 3 tenants on a third of the jobs, 1 job
in 200 from a schedule, 1 in 20 a workflow step), then ``VACUUM ANALYZE``. A real
``jobrelay api`` (gunicorn, its default settings) serves it with a private
redis-server, and one keep-alive client on loopback sends each endpoint's request
``--requests`` times in turn (after ``--warmup`` unmeasured rounds), so each
latency is the server's answer plus loopback. The database is dropped after each
size. Target: each endpoint's p99 at the largest size within 2x its p99 at 10k.

    python -m bench.store_scale                         # 10k, 100k, 1M
    python -m bench.store_scale --with-10m              # and 10M (about half an hour of filling)
    python -m bench.store_scale --sizes 10000,100000 --requests 50   # a quick look
"""

from __future__ import annotations

import argparse
import http.client
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.report import Output, add_output_argument, machine, met, percentile
from bench.store_fill import DEFAULT_ADMIN_URL, fill, private_database
from services.worker.tasks import load_task_modules
from shared.redis_server import RedisServer, free_port
from shared.store.engine import create_store_engine
from shared.store.jobs import encode_cursor
from shared.store.tasks import TaskRegistry

ADMIN_TOKEN = "bench-scale-admin-0123456789"
TENANT_TOKEN = "bench-scale-tenant-0123456789"
TARGET_RATIO = 2.0


def endpoints(url: str) -> dict[str, tuple[str, str]]:
    """Name -> (token, path) of each request timed, its values picked from the data of the database at ``url``."""
    engine = create_store_engine(url)
    with engine.connect() as conn:
        total = conn.execute(text("SELECT count(*) FROM jobs")).scalar_one()
        middle = conn.execute(text("SELECT id FROM jobs ORDER BY id OFFSET :n LIMIT 1"), {"n": total // 2}).scalar_one()
        workflow = conn.execute(text("SELECT workflow_id FROM jobs WHERE id <= :id AND workflow_id IS NOT NULL "
                                     "ORDER BY id DESC LIMIT 1"), {"id": middle}).scalar_one()  # fmt: skip
    engine.dispose()
    three_days_ago = (datetime.now(UTC) - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    lists = {
        "jobs, newest": "",
        "jobs, a page in the middle": f"cursor={encode_cursor(middle)}",
        "jobs, status=failed": "status=failed",
        "jobs, queue=default&status=expired": "queue=default&status=expired",
        "jobs, task=emails.send": "task=emails.send",
        "jobs, task=diagnostics.fail&status=failed": "task=diagnostics.fail&status=failed",
        "jobs, queue=emails&task=diagnostics.echo (none match)": "queue=emails&task=diagnostics.echo",
        "jobs, queue=reports&created_after=3 days ago": f"queue=reports&created_after={three_days_ago}",
        "jobs, workflow_id": f"workflow_id={workflow}",
        "jobs, schedule_id": "schedule_id=nightly-report",
    }
    found = {name: (ADMIN_TOKEN, "/v1/jobs" + ("?" + query if query else "")) for name, query in lists.items()}
    found.update({
        "tenant's jobs, status=failed": (TENANT_TOKEN, "/v1/jobs?status=failed"),
        "a job": (ADMIN_TOKEN, f"/v1/jobs/{middle}"),
        "queues (counts, dead letters)": (ADMIN_TOKEN, "/v1/queues"),
        "dead letters of a queue": (ADMIN_TOKEN, "/v1/queues/default/dead"),
        "tenant's dead letters": (TENANT_TOKEN, "/v1/queues/default/dead"),
        "a workflow": (ADMIN_TOKEN, f"/v1/workflows/{workflow}"),
        "schedules": (ADMIN_TOKEN, "/v1/schedules"),
        "console overview": ("console", "/console/"),
        "console jobs, status=failed": ("console", "/console/jobs?status=failed"),
        "console dead letters": ("console", "/console/dead"),
        "console charts": ("console", "/console/charts"),
    })  # fmt: skip
    return found


def start_api(tmp: Path, database_url: str, redis_url: str) -> tuple[subprocess.Popen[bytes], int]:
    engine = create_store_engine(database_url)
    TaskRegistry(engine).register(load_task_modules().specs(), registered_by="bench")
    engine.dispose()
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "DATA_DIR": str(tmp),
        "API_BIND": f"127.0.0.1:{port}",
        "API_KEYS": f"bench:{ADMIN_TOKEN}:admin tenant:{TENANT_TOKEN}:read+write:acme",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "api"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                conn.close()
                return process, port
        except OSError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.terminate()
            process.wait(timeout=30)
            raise RuntimeError("the API did not start")
        time.sleep(0.2)


def console_cookie(conn: http.client.HTTPConnection) -> str:
    body = urllib.parse.urlencode({"key": ADMIN_TOKEN})
    conn.request("POST", "/console/login", body=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    response = conn.getresponse()
    response.read()
    cookies = [value.split(";", 1)[0] for name, value in response.getheaders() if name.lower() == "set-cookie"]
    if not cookies:
        raise RuntimeError(f"the console login answered {response.status} without a cookie")
    return "; ".join(cookies)


def time_requests(port: int, paths: dict[str, tuple[str, str]], requests: int, warmup: int) -> dict[str, Any]:
    """Each request ``requests`` times, round-robin over the endpoints so a slow moment hits them all alike."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    cookie = console_cookie(conn)
    times_ms: dict[str, list[float]] = {name: [] for name in paths}
    for round_index in range(warmup + requests):
        for name, (token, path) in paths.items():
            headers = {"Cookie": cookie} if token == "console" else {"Authorization": f"Bearer {token}"}
            started = time.perf_counter()
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            response.read()
            elapsed_ms = (time.perf_counter() - started) * 1000
            if response.status != 200:
                raise RuntimeError(f"{name}: GET {path} answered {response.status}")
            if round_index >= warmup:
                times_ms[name].append(elapsed_ms)
    conn.close()
    return {
        name: {"p50_ms": percentile(values, 0.5), "p99_ms": percentile(values, 0.99), "max_ms": max(values)}
        for name, values in times_ms.items()
    }


def measure_size(size: int, args: argparse.Namespace, tmp: Path, redis_url: str) -> dict[str, Any]:
    with private_database(args.admin_url, prefix="jobrelay_bench_scale") as url:
        fill_s = fill(url, size)
        print(f"{size:,} jobs filled in {fill_s:.0f} s", flush=True)
        paths = endpoints(url)
        process, port = start_api(tmp, url, redis_url)
        try:
            results = time_requests(port, paths, args.requests, args.warmup)
        finally:
            process.terminate()
            process.wait(timeout=30)
    for name, figures in results.items():
        print(f"  {name:55s} p50 {figures['p50_ms']:7.1f} ms  p99 {figures['p99_ms']:7.1f} ms", flush=True)
    return {"fill_s": fill_s, "paths": {name: path for name, (_, path) in paths.items()}, "endpoints": results}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="table sizes, comma-separated")
    parser.add_argument("--with-10m", action="store_true", help="add 10,000,000 jobs to the sizes")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per endpoint and size")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured rounds first (caches, pool)")
    parser.add_argument("--admin-url", default=DEFAULT_ADMIN_URL)
    add_output_argument(parser)
    args = parser.parse_args(argv)
    sizes = sorted({int(size) for size in args.sizes.split(",")} | ({10_000_000} if args.with_10m else set()))
    measured: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="jobrelay-store-scale-") as tmp_name:
        tmp = Path(tmp_name)
        server = RedisServer(tmp / "redis").start()
        try:
            for size in sizes:
                measured[str(size)] = measure_size(size, args, tmp, server.url)
        finally:
            server.stop()
    load_1m = os.getloadavg()[0]
    smallest, largest = str(sizes[0]), str(sizes[-1])
    names = list(measured[smallest]["endpoints"])
    ratios = {
        name: measured[largest]["endpoints"][name]["p99_ms"] / measured[smallest]["endpoints"][name]["p99_ms"]
        for name in names
    }
    out = Output(args.out)
    link = out.publish(
        "store_scale",
        {
            "machine": machine(),
            "settings": {"sizes": sizes, "requests": args.requests, "warmup": args.warmup},
            "load_1m": load_1m,
            "sizes": measured,
            "ratios": ratios,
            "target_ratio": TARGET_RATIO,
        },
    )
    header = " | ".join(f"{int(size):,} jobs p99 ms" for size in sizes)
    rows = "\n".join(
        f"| {name} | "
        + " | ".join(f"{measured[str(size)]['endpoints'][name]['p99_ms']:.1f}" for size in sizes)
        + f" | {ratios[name]:.2f} | {met(ratios[name] <= TARGET_RATIO)} |"
        for name in names
    )
    fills = ", ".join(f"{int(size):,} in {measured[str(size)]['fill_s']:.0f} s" for size in sizes)
    failing = [name for name in names if ratios[name] > TARGET_RATIO]
    verdict = (f"every endpoint within {TARGET_RATIO:g}x: **met**" if not failing
               else f"every endpoint within {TARGET_RATIO:g}x: **not met** for {', '.join(failing)}")  # fmt: skip
    # NOTE: S608 mistakes the text "INSERT ... SELECT" below for SQL.
    body = f"""
`python -m bench.store_scale {" ".join(argv if argv is not None else sys.argv[1:])}`: for each size a private
PostgreSQL database filled by `bench/store_fill.py` (one `INSERT ... SELECT FROM generate_series` per million
rows, then `VACUUM ANALYZE`; {fills}): a week of time-ordered jobs, 7 tasks on 4 queues, 96.5% succeeded,
2% failed of which 1.5 points dead letters, 1% cancelled, 0.5% expired, the newest 2,000 waiting or running,
3 tenants on a third of the jobs, 1 in 200 from a schedule, 1 in 20 a workflow step. A real `jobrelay api`
(gunicorn, default settings) with a private Redis; one keep-alive client on loopback sends each request
{args.requests} times round-robin after {args.warmup} unmeasured rounds. Load average at the end: {load_1m:.1f}.
Machine: {machine()}.

| endpoint | {header} | p99 {int(sizes[-1]):,} / {int(sizes[0]):,} | within {TARGET_RATIO:g}x |
| --- | {" | ".join("---" for _ in sizes)} | --- | --- |
{rows}

Target: each endpoint's p99 at {int(sizes[-1]):,} jobs within {TARGET_RATIO:g}x its p99 at {int(sizes[0]):,};
{verdict}. The console's charts read the last hour's rows: the fill spreads every size over one week, so
their cost follows the job rate, which grows with the size here (docs/architecture.md, "Queries that stay
flat as the tables grow").

{link}
"""  # noqa: S608
    out.write_section("API reads as the tables grow", body)


if __name__ == "__main__":
    main()
