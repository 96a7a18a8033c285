"""API submission speed: single submits (wrk, keep-alive) and batches, on SQLite and on PostgreSQL.

Starts Redis and ``jobrelay api`` (gunicorn) alone, no workers, so the numbers
are the ingress: validate, commit the row, publish the message. Single
submits come from ``wrk`` (Debian's package) with ``--latency`` as fast as the
API answers, then at a fixed rate from an asyncio client that counts each
latency from the request's scheduled send time; batches of 1,000 from Python
threads.

    python -m bench.api_submit --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

from bench.report import Output, add_output_argument, machine, percentile
from services.worker.tasks import load_task_modules
from shared.redis_server import RedisServer, free_port
from shared.store.engine import create_store_engine, migrate
from shared.store.tasks import TaskRegistry

TOKEN = "benchtoken-1234567890"
POST_LUA = """
wrk.method = "POST"
wrk.body = '{"task": "diagnostics.echo", "args": {"message": "bench"}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
"""


def start_api(tmp: Path, database_url: str, redis_url: str, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    engine = create_store_engine(database_url)
    migrate(engine)
    TaskRegistry(engine).register(load_task_modules().specs(), registered_by="bench")
    engine.dispose()
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "DATA_DIR": str(tmp),
        "API_BIND": f"127.0.0.1:{port}",
        "API_KEYS": f"bench:{TOKEN}:admin",
        "API_WORKERS": str(workers),
        "LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen([sys.executable, "-m", "services.cli", "api"], env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1)
            return process, url
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the API did not start") from None
            time.sleep(0.1)


def wrk(url: str, seconds: int, connections: int, tmp: Path) -> dict[str, float]:
    script = tmp / "post.lua"
    script.write_text(POST_LUA % TOKEN)
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url + "/v1/jobs"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip

    def ms(label: str) -> float:
        match = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not match:
            raise RuntimeError(f"no {label} in wrk output:\n{out}")
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": ms("50%"), "p99": ms("99%"), "errors": float(non2xx.group(1)) if non2xx else 0.0}


def paced(url: str, rate: float, seconds: float, connections: int = 32) -> dict[str, float]:
    """Single submits sent on a fixed schedule of ``rate`` per second over keep-alive connections.

    Each latency runs from the request's scheduled send time to its whole response, so a
    stall delays the requests queued behind it too and they count it (no coordinated
    omission, as wrk2 measures); when every connection is busy, the next request waits
    for one, and that wait counts too. The client's own garbage collector is off for the
    run: a full collection over its thousands of pending requests stalled the sender ~50 ms
    once per run, and every request due meanwhile counted the stall as the server's.
    """
    host, port = url.removeprefix("http://").split(":")
    body = b'{"task": "diagnostics.echo", "args": {"message": "paced"}}'
    request = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    total = int(rate * seconds)
    latencies: list[float] = []
    statuses: list[int] = []

    async def one(idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]], due: float) -> None:
        reader, writer = await idle.get()
        writer.write(request)
        status_line = await reader.readline()
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        await reader.readexactly(length)
        latencies.append(asyncio.get_running_loop().time() - due)
        statuses.append(int(status_line.split()[1]))
        idle.put_nowait((reader, writer))

    async def run() -> float:
        loop = asyncio.get_running_loop()
        idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
        for _ in range(connections):
            idle.put_nowait(await asyncio.open_connection(host, int(port)))
        start = loop.time() + 0.1
        tasks = []
        for index in range(total):
            due = start + index / rate
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            tasks.append(asyncio.ensure_future(one(idle, due)))
        await asyncio.gather(*tasks)
        elapsed = loop.time() - start
        while not idle.empty():
            idle.get_nowait()[1].close()
        return elapsed

    gc.disable()
    try:
        elapsed = asyncio.run(run())
    finally:
        gc.enable()
    return {
        "rate": rate,
        "achieved": total / elapsed,
        "p50": percentile(latencies, 0.5) * 1000,
        "p99": percentile(latencies, 0.99) * 1000,
        "max": max(latencies) * 1000,
        "errors": float(sum(status != 202 for status in statuses)),
    }


def batches(url: str, seconds: float, threads: int, size: int = 1000) -> float:
    body = json.dumps({"jobs": [{"task": "diagnostics.echo", "args": {"message": "b"}}] * size}).encode()
    done = [0] * threads
    stop_at = time.monotonic() + seconds

    def client(index: int) -> None:
        while time.monotonic() < stop_at:
            req = urllib.request.Request(url + "/v1/jobs/batch", data=body, method="POST")
            req.add_header("Authorization", f"Bearer {TOKEN}")
            req.add_header("Content-Type", "application/json")
            with urllib.request.urlopen(req, timeout=60) as resp:
                assert resp.status == 202
            done[index] += size

    started = time.monotonic()
    pool = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return sum(done) / (time.monotonic() - started)


def postgres_url() -> str | None:
    admin = os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    name = f"jobrelay_bench_{uuid.uuid4().hex[:8]}"
    try:
        engine = create_engine(admin, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
    except Exception:
        return None
    return admin.rsplit("/", 1)[0] + f"/{name}"


def drop_database(url: str) -> None:
    admin, name = url.rsplit("/", 1)
    engine = create_engine(f"{admin}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rate", type=float, default=1500, help="single submits per second of the paced run")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    add_output_argument(parser)
    args = parser.parse_args(argv)
    rows = []
    measured: dict[str, dict[str, float] | None] = {}
    with tempfile.TemporaryDirectory(prefix="jobrelay-api-bench-") as tmp_name:
        tmp = Path(tmp_name)
        server = RedisServer(tmp / "redis").start()
        try:
            stores = {"SQLite": f"sqlite:///{tmp}/jobs.db", "PostgreSQL": postgres_url()}
            for name, database_url in stores.items():
                if database_url is None:
                    rows.append(f"| {name} | not measured: no PostgreSQL reachable | | | | | |")
                    measured[name] = None
                    continue
                process, url = start_api(tmp, database_url, server.url, args.workers)
                try:
                    single = wrk(url, args.seconds, args.connections, tmp)
                    steady = paced(url, args.rate, args.seconds)
                    batch_rate = batches(url, args.seconds, threads=2)
                finally:
                    process.terminate()
                    process.wait(timeout=30)
                    if name == "PostgreSQL":
                        drop_database(database_url)
                rows.append(
                    f"| {name} | {single['rps']:,.0f} | {single['p50']:.1f} | {single['p99']:.1f} "
                    f"| {steady['p50']:.1f} | {steady['p99']:.1f} | {batch_rate:,.0f} |"
                )
                measured[name] = {
                    **single,
                    "paced": steady,  # type: ignore[dict-item]
                    "batch_jobs_per_s": batch_rate,
                }
                print(rows[-1], flush=True)
        finally:
            server.stop()
    out = Output(args.out)
    link = out.publish(
        "api_submit",
        {
            "machine": machine(),
            "settings": {
                "seconds": args.seconds,
                "connections": args.connections,
                "paced_rate": args.rate,
                "api_workers": args.workers,
            },
            "stores": measured,
            "target_single_per_s": 1500,
            "target_batch_per_s": 20000,
        },
    )
    verdicts = []
    for name, figures in measured.items():
        if figures is None:
            continue
        steady = figures["paced"]
        single_met = figures["rps"] >= 1500 and steady["p99"] < 20 and not steady["errors"]  # type: ignore[index]
        batch_met = figures["batch_jobs_per_s"] >= 20000
        verdicts.append(
            f"| {name} | {'met' if single_met else '**not met**'} | {'met' if batch_met else '**not met**'} |"
        )
    body = f"""
`jobrelay api` ({args.workers} gunicorn workers, gevent) with Redis on the same machine and no
workers running: each accepted job is validated, committed and published. Saturated: `wrk -t2
-c{args.connections} -d{args.seconds}s` posting `diagnostics.echo` (keep-alive), as fast as the API
answers. Paced: {args.rate:,.0f} submits per second for {args.seconds} s on a fixed schedule over 32
keep-alive connections, each latency counted from the request's scheduled send time (a stall counts
for every request queued behind it, as wrk2 measures; the Python client runs with its garbage collector
off, whose full collection stalled the sender). Batches: 2 threads posting batches of 1,000 for
{args.seconds} s. Everything, the load generators included, shares the 2 cores.
Machine: {machine()}.

| store | saturated submits/s | p50 ms | p99 ms | at {args.rate:,.0f}/s: p50 ms | p99 ms | batch jobs/s |
| --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

Targets: at least 1,500 single submits/s with p99 under 20 ms (the paced run), and 20,000 jobs/s
through the batch endpoint.

| store | single submits | batch |
| --- | --- | --- |
{chr(10).join(verdicts)}

{link}
"""
    out.write_section("API submissions", body)


if __name__ == "__main__":
    main()
