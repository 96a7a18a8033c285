"""The API alone as a real gunicorn process (``jobrelay api``), for tests that speak raw HTTP to it.

No worker and no scheduler: the built-in catalog is registered in the store
before the API starts, so every job it accepts stays queued, whatever it
asks for. The store is a SQLite file or a PostgreSQL database; Redis is a
private ``redis-server``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from shared.redis_server import RedisServer, free_port
from shared.store.engine import create_store_engine, migrate
from shared.store.models import jobs, metadata, schedules, workflows
from shared.store.tasks import TaskRegistry

REPO = Path(__file__).resolve().parents[2]
#: Variables of the test's own environment that must not reach the API.
_ISOLATED = ("REDIS_URL", "DATABASE_URL", "API_KEYS", "PROMETHEUS_MULTIPROC_DIR", "TASK_MODULES", "SCHEDULES_FILE")
_STATUS_LINE = re.compile(rb"(?:^|\r\n)HTTP/1\.[01] (\d{3}) ")


class ApiServer:
    """``jobrelay api`` with one gunicorn worker on a free port, its log in ``root``."""

    def __init__(self, root: Path, database_url: str) -> None:
        self.root = root.resolve()
        self.database_url = database_url
        self.token = secrets.token_urlsafe(24)
        self.port = free_port()
        self.redis = RedisServer(self.root / "redis")
        self.engine: Engine = create_store_engine(database_url)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.root / "api.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, timeout_s: float = 60.0) -> ApiServer:
        from services.worker.tasks import load_task_modules

        self.root.mkdir(parents=True, exist_ok=True)
        self.redis.start()
        migrate(self.engine)
        with self.engine.begin() as conn:
            for table in reversed(metadata.sorted_tables):
                conn.execute(table.delete())
        TaskRegistry(self.engine).register(load_task_modules().specs(), registered_by="tests")
        env = {
            **{k: v for k, v in os.environ.items() if k not in _ISOLATED},
            "DATA_DIR": str(self.root / "data"),
            "REDIS_URL": self.redis.url,
            "DATABASE_URL": self.database_url,
            "API_BIND": f"127.0.0.1:{self.port}",
            "API_KEYS": f"tests:{self.token}:admin",
            "LOG_LEVEL": "WARNING",
            # NOTE: an event stream lasts this long (300 s by default); a second keeps a fuzzer's call to it short.
            "EVENTS_MAX_DURATION_S": "1",
        }
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "api", "--workers", "1"],
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while not self.healthy(path="/readyz"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the API did not become ready:\n{self.log_text()[-3000:]}")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.redis.stop()
        self.engine.dispose()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- what the tests look at ----------------------------------------------

    def healthy(self, *, path: str = "/healthz", timeout_s: float = 5.0) -> bool:
        """Whether ``path`` answers 200 on a fresh connection within ``timeout_s``."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout_s)
        try:
            conn.request("GET", path)
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def stored(self) -> int:
        """The rows a request may write: jobs, workflows and schedules."""
        with self.engine.connect() as conn:
            return sum(
                conn.execute(select(func.count()).select_from(table)).scalar_one()
                for table in (jobs, workflows, schedules)
            )

    def worker_pids(self) -> set[int]:
        """gunicorn's worker processes: children of its master."""
        assert self.process is not None
        found = set()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError):
                    if (entry / "stat").read_text().rsplit(")", 1)[1].split()[1] == str(self.process.pid):
                        found.add(int(entry.name))
        return found

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One JSON request with the admin token."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            headers = {"Authorization": f"Bearer {self.token}"}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
        finally:
            conn.close()

    def exchange(self, data: bytes, *, timeout_s: float = 10.0) -> tuple[list[int], bytes]:
        """Send raw bytes, end the sending side, read until the server closes.

        Returns the status of every answer (a kept-alive connection may carry
        several) and the raw answer. Ending the sending side is the client
        saying it has no more: a body cut short ends there, not at a timeout.
        """
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout_s) as sock:
            # NOTE: the server may answer and close before it has read everything.
            with contextlib.suppress(OSError):
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            chunks = []
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        answer = b"".join(chunks)
        return [int(status) for status in _STATUS_LINE.findall(answer)], answer


def request_bytes(
    method: str,
    path: str,
    token: str,
    body: bytes = b"",
    *,
    content_type: str | None = "application/json",
    chunks: list[bytes] | None = None,
    extra: str = "",
) -> bytes:
    """A request as sent: a Content-Length body, or ``chunks`` already framed (then chunked)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n{extra}"
    if content_type is not None:
        head += f"Content-Type: {content_type}\r\n"
    if chunks is not None:
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + b"".join(chunks)
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def chunk(data: bytes) -> bytes:
    """One well-framed chunk."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


LAST_CHUNK = b"0\r\n\r\n"
