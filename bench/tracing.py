"""What tracing costs: the worker's no-op drain and the API's single-submit p99, tracing off / on at 1.0 / on at 1%.

"on" exports over OTLP/HTTP to a sink in this process (it answers every export 200 and
keeps nothing), so the figures include the SDK's span work and the exporter's HTTP
posts, not a collector's. The sampler is ``parentbased_traceidratio`` with the given
ratio (the worker's jobs are preloaded untraced, so each attempt's span is a root and
the ratio decides; an API request is always a root). Runs alternate between the
variants (off, 1.0, 0.01, off, ...); the report gives medians and ranges.

    python -m bench.tracing --jobs 3000 --runs 3 --seconds 5 --rate 200
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.api_submit import paced, start_api
from bench.procs import stop
from bench.report import Output, add_output_argument, machine
from bench.worker_throughput import run_once
from shared.redis_server import RedisServer

#: Variant -> the OTEL_* variables it runs with (none: tracing off).
VARIANTS: dict[str, dict[str, str]] = {
    "off": {},
    "on, sampled 1.0": {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.0"},
    "on, sampled 0.01": {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"},
}


class _Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


@contextmanager
def otel_environment(variables: dict[str, str], endpoint: str) -> Iterator[None]:
    """The process environment the bench's child processes inherit, for one variant."""
    names = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG")
    saved = {name: os.environ.pop(name, None) for name in names}
    if variables:
        os.environ.update(variables, OTEL_EXPORTER_OTLP_ENDPOINT=endpoint)
    try:
        yield
    finally:
        for name in names:
            os.environ.pop(name, None)
            if saved[name] is not None:
                os.environ[name] = saved[name]  # type: ignore[assignment]


def api_p99(rate: float, seconds: float) -> dict[str, float]:
    """Single submits at ``rate`` per second against a fresh API (SQLite, 2 gunicorn workers)."""
    with tempfile.TemporaryDirectory(prefix="jobrelay-bench-") as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        try:
            process, url = start_api(Path(tmp), f"sqlite:///{tmp}/jobs.db", server.url, workers=2)
            try:
                paced(url, rate, 1.0)  # warm-up: imports, connections, the first commits
                return paced(url, rate, seconds)
            finally:
                stop(process)
        finally:
            server.stop()


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=3000, help="no-op jobs per worker drain")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each paced API run")
    parser.add_argument("--rate", type=float, default=200.0, help="single submits per second")
    parser.add_argument("--note", default="", help="a line added under the table (how the machine was used)")
    add_output_argument(parser)
    args = parser.parse_args(argv)
    out = Output(args.out)

    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{sink.server_address[1]}"
    throughput: dict[str, list[float]] = {name: [] for name in VARIANTS}
    p99: dict[str, list[float]] = {name: [] for name in VARIANTS}
    try:
        for run in range(args.runs):
            for name, variables in VARIANTS.items():
                with otel_environment(variables, endpoint):
                    throughput[name].append(run_once("jobrelay", args.jobs, args.processes, args.threads))
                    latency = api_p99(args.rate, args.seconds)
                p99[name].append(latency["p99"])
                print(
                    f"run {run + 1} {name}: {throughput[name][-1]:.0f} jobs/s, "
                    f"API p99 {latency['p99']:.1f} ms at {latency['achieved']:.0f}/s ({latency['errors']:.0f} errors)",
                    flush=True,
                )
    finally:
        sink.shutdown()

    off_jobs, off_p99 = statistics.median(throughput["off"]), statistics.median(p99["off"])
    lines = [
        f"Machine: {machine()}",
        f"Worker: {args.jobs} no-op jobs, {args.processes} processes x {args.threads} threads, SQLite; "
        f"API: single submits at {args.rate:g}/s for {args.seconds:g} s, 2 gunicorn workers, SQLite; "
        f"{args.runs} runs each, median (range).",
        "",
        "| tracing | worker jobs/s | vs off | API single-submit p99 ms | vs off |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in VARIANTS:
        jobs_ratio = statistics.median(throughput[name]) / off_jobs
        p99_ratio = statistics.median(p99[name]) / off_p99
        lines.append(
            f"| {name} | {spread(throughput[name])} | {jobs_ratio:.3f} | {spread(p99[name])} | {p99_ratio:.3f} |"
        )
    if args.note:
        lines += ["", args.note]
    out.write_section("Tracing overhead", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
