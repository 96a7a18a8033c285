"""The whole stack as real processes: ``jobrelay up`` (gunicorn, the worker supervisor, the scheduler)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared.redis_server import free_ports
from tests.e2e.api_server import ApiServer


@dataclass
class Stack:
    process: subprocess.Popen[bytes]
    base_url: str
    token: str
    data_dir: Path
    log_path: Path
    worker_metrics_url: str

    def request(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token or self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def wait_job(self, job_id: str, statuses: set[str], timeout_s: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            status, job = self.request("GET", f"/v1/jobs/{job_id}")
            assert status == 200, job
            if job["status"] in statuses:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} is {job['status']} after {timeout_s}s")
            time.sleep(0.02)

    def pids_of(self, module: str) -> list[int]:
        """Processes of this stack (found by their DATA_DIR) running ``python -m module``."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if module.encode() in cmdline and f"DATA_DIR={self.data_dir}".encode() in environ:
                found.append(int(entry.name))
        return found


def start_stack(tmp: Path, extra_env: dict[str, str] | None = None) -> Stack:
    data_dir = (tmp / "data").resolve()
    port, worker_port, scheduler_port = free_ports(3)
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL", "API_KEYS")},
        "DATA_DIR": str(data_dir),
        "API_BIND": f"127.0.0.1:{port}",
        "WORKER_METRICS_BIND": f"127.0.0.1:{worker_port}",
        "SCHEDULER_METRICS_BIND": f"127.0.0.1:{scheduler_port}",
        "WORKER_PROCESSES": "2",
        "WORKER_THREADS": "4",
        # NOTE: the tests' receivers listen on loopback, which the SSRF guard refuses otherwise.
        "CALLBACK_ALLOW_PRIVATE": "on",
        # NOTE: an event stream of a queue lasts this long; a second keeps a fuzzer's call to it short.
        "EVENTS_MAX_DURATION_S": "1",
        **(extra_env or {}),
    }
    log_path = tmp / "stack.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    key_file = data_dir / "dev-api-key"
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise AssertionError(f"jobrelay up exited early:\n{log_path.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            # NOTE: SIGTERM first: `jobrelay up` stops the API, workers, scheduler and Redis it started;
            # a SIGKILL would leave them to their death signal.
            _stop(process)
            raise AssertionError(f"stack not ready in 60s:\n{log_path.read_text()[-4000:]}")
        if key_file.exists():
            stack = Stack(
                process=process,
                base_url=base_url,
                token=key_file.read_text().split(":")[1],
                data_dir=data_dir,
                log_path=log_path,
                worker_metrics_url=f"http://127.0.0.1:{worker_port}/metrics",
            )
            try:
                status, tasks = stack.request("GET", "/v1/tasks")
                if status == 200 and tasks["items"] and len(stack.pids_of("services.worker.process")) == 2:
                    return stack
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                # A busy machine: the API may accept and not answer within the request's timeout yet.
                pass
        time.sleep(0.1)


def _stop(process: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def stop_stack(stack: Stack) -> int:
    stack.process.send_signal(signal.SIGTERM)
    try:
        return stack.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        stack.process.kill()
        raise


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("stack"))
    yield stack
    code = stop_stack(stack)
    assert code == 0, stack.log_path.read_text()[-4000:]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """The API alone under gunicorn, on SQLite and, where it answers, on PostgreSQL (emptied first)."""
    root = tmp_path_factory.mktemp(f"api-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{root / 'jobs.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
        if url is None:
            if os.environ.get("CI"):
                pytest.fail("PostgreSQL is required in CI but did not answer")
            pytest.skip("no PostgreSQL reachable")
    server = ApiServer(root, url)
    try:
        yield server.start()
    finally:
        server.stop()
