"""Processes seen through /proc: a worker supervisor's children and their resident memory."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from shared.redis_server import free_port

PROC = Path("/proc")


def children(pid: int) -> list[int]:
    """The live child processes of ``pid``, in pid order."""
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # NOTE: the command name (field 2) may hold spaces and parentheses; the fields after the last ")" do not.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return sorted(found)


def rss_kib(pid: int) -> int:
    """Resident set size (``VmRSS``) of ``pid`` in KiB; 0 when it is gone."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def wait_for_children(pid: int, count: int, *, timeout_s: float = 60.0) -> list[int]:
    """Wait until ``pid`` has ``count`` children; returns them."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = children(pid)
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise RuntimeError(f"process {pid} has {len(found)} of {count} children after {timeout_s:.0f} s")
        time.sleep(0.05)


def stop(process: subprocess.Popen[bytes], *, timeout_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it does not stop in time."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def kill_hard(pid: int) -> None:
    """SIGKILL ``pid`` if it is still there."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def age_s(pid: int) -> float:
    """Seconds since ``pid`` started (0 when it is gone)."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
        uptime_s = float((PROC / "uptime").read_text().split()[0])
    except OSError:
        return 0.0
    start_ticks = int(stat.rsplit(")", 1)[1].split()[19])
    return uptime_s - start_ticks / os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """CPU seconds (user and system) ``pid`` has used so far; 0 when it is gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def command_line(pid: int) -> list[str]:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().decode().split("\0")[:-1]
    except OSError:
        return []


def descendants(pid: int) -> list[int]:
    """Children, grandchildren... of ``pid``."""
    found = []
    for child in children(pid):
        found.extend([child, *descendants(child)])
    return found


def kill_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process and everything it started, at once: for runs whose Redis and store are thrown away.

    NOTE: the process goes first so that a supervisor cannot start a replacement for a killed child.
    """
    tree = descendants(process.pid)
    process.kill()
    for pid in tree:
        kill_hard(pid)
    process.wait()


@contextlib.contextmanager
def bench_worker(
    tmp: str | Path,
    redis_url: str,
    database_url: str,
    *,
    task_modules: str,
    queue: str,
    processes: int,
    threads: int,
    label: str = "",
) -> Iterator[subprocess.Popen[bytes]]:
    """``jobrelay worker`` on a bench's private Redis and store, its log in ``tmp``; killed with its tree after.

    A ``RuntimeError`` raised inside (a drain that timed out, counts that are off) comes out with
    the end of the workers' log, prefixed by ``label``.
    """
    env = {**os.environ, "REDIS_URL": redis_url, "DATA_DIR": str(tmp), "LOG_LEVEL": "WARNING",
           "DATABASE_URL": database_url, "TASK_MODULES": task_modules,
           "WORKER_METRICS_BIND": f"127.0.0.1:{free_port()}"}  # fmt: skip
    command = [sys.executable, "-m", "services.cli", "worker", "--queues", queue,
               "--processes", str(processes), "--threads", str(threads)]  # fmt: skip
    log_path = Path(tmp) / "workers.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield worker
        except RuntimeError as exc:
            raise RuntimeError(f"{label}{exc}\n{log_path.read_text()[-3000:]}") from exc
        finally:
            kill_tree(worker)
