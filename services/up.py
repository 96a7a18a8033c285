"""``jobrelay up``: the whole stack on one machine, stopped cleanly by Ctrl-C or SIGTERM.

With neither ``REDIS_URL`` nor ``DATABASE_URL`` set it runs an embedded
Redis (AOF on, data under ``DATA_DIR``, its own port) and SQLite, an API on
``API_BIND``, one worker for every catalog queue and the scheduler.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

from services.ports import choose_ports
from services.worker.tasks import load_task_modules
from shared.processes import spawn
from shared.redis_server import RedisServer
from shared.settings import Settings, parse_api_keys
from shared.store.engine import create_store_engine, migrate

DEV_KEY_FILE = "dev-api-key"


def dev_api_keys(data_dir: Path) -> str:
    """``API_KEYS`` for a laptop: one admin key, made on first run and kept in DATA_DIR."""
    path = data_dir / DEV_KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(f"dev:{secrets.token_urlsafe(24)}:admin\n")
        path.chmod(0o600)
    return path.read_text().strip()


def listeners(settings: Settings) -> dict[str, str]:
    """Every address the stack listens on, by the variable that sets it."""
    wanted = {"API_BIND": settings.api_bind, "SCHEDULER_METRICS_BIND": settings.scheduler_metrics_bind}
    if settings.worker_metrics:
        wanted["WORKER_METRICS_BIND"] = settings.worker_metrics_bind
    return wanted


def urls(settings: Settings) -> list[tuple[str, str]]:
    """What ``jobrelay up`` serves, for the banner."""
    api = f"http://{settings.api_bind}"
    served = [
        ("API", api),
        ("API docs", f"{api}/docs"),
        ("console", f"{api}/console/"),
        ("API metrics", f"{api}/metrics"),
    ]
    if settings.worker_metrics:
        served.append(("worker metrics", f"http://{settings.worker_metrics_bind}/metrics"))
    served.append(("scheduler metrics", f"http://{settings.scheduler_metrics_bind}/metrics"))
    return served


def claim_ports(settings: Settings, env: dict[str, str]) -> Settings:
    """Check every port before starting; taken defaults move to free ports (printed), taken explicit ones stop."""
    wanted = listeners(settings)
    explicit = {variable for variable in wanted if os.environ.get(variable)}
    binds: dict[str, str] = {}
    for choice in choose_ports(wanted, explicit):
        env[choice.variable] = binds[choice.variable] = choice.bind
        if choice.moved_from:
            print(f"jobrelay up: {choice.moved_from} is taken; using {choice.variable}={choice.bind}", flush=True)
    return replace(
        settings,
        api_bind=binds["API_BIND"],
        scheduler_metrics_bind=binds["SCHEDULER_METRICS_BIND"],
        worker_metrics_bind=binds.get("WORKER_METRICS_BIND", settings.worker_metrics_bind),
    )


def run(settings: Settings) -> int:
    data_dir = Path(settings.data_dir)
    env = dict(os.environ)
    settings = claim_ports(settings, env)
    env["DATA_DIR"] = str(data_dir.resolve())
    redis_server = None
    if not settings.redis_url:
        redis_server = RedisServer(data_dir / "redis").start()
        env["REDIS_URL"] = redis_server.url
    if not settings.api_keys and settings.api_auth:
        env["API_KEYS"] = dev_api_keys(data_dir)
    migrate(create_store_engine(settings.effective_database_url))
    queues = load_task_modules(settings.task_modules).queues()
    jobrelay = [sys.executable, "-m", "services.cli"]
    commands = {
        "api": [*jobrelay, "api"],
        "worker": [*jobrelay, "worker", "--queues", ",".join(queues)],
        "scheduler": [*jobrelay, "scheduler"],
    }
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    children = {name: spawn(cmd, env=env) for name, cmd in commands.items()}
    key = parse_api_keys(env["API_KEYS"])[0].token if env.get("API_KEYS") else None
    if not _api_answers(settings.api_bind, children, stop):
        return _stop_all(children, redis_server, exit_code=0 if stop.is_set() else 1)
    print(f"\njobrelay is up (queues: {', '.join(queues)})", flush=True)
    width = max(len(name) for name, _ in urls(settings))
    for name, url in urls(settings):
        print(f"  {name.ljust(width)}  {url}", flush=True)
    if key:
        print(f"API key: {key}", flush=True)
        print(
            f'try: curl -H "Authorization: Bearer {key}" -H "Content-Type: application/json" '
            f'-d \'{{"task":"diagnostics.echo","args":{{"message":"hi"}}}}\' '
            f"http://{settings.api_bind}/v1/jobs",
            flush=True,
        )
    print("Ctrl-C stops everything.\n", flush=True)
    exit_code = 0
    while not stop.wait(0.5):
        for name, child in children.items():
            if child.poll() is not None:
                print(f"jobrelay up: {name} exited with {child.returncode}; stopping", file=sys.stderr)
                exit_code = 1
                stop.set()
    return _stop_all(children, redis_server, exit_code=exit_code)


def _api_answers(api_bind: str, children: dict[str, subprocess.Popen[bytes]], stop: threading.Event) -> bool:
    """Wait (60s at most) until the API answers ``/healthz``; False when a process exited or time ran out."""
    url = f"http://{api_bind}/healthz"
    deadline = time.monotonic() + 60
    while not stop.is_set() and time.monotonic() < deadline:
        for name, child in children.items():
            if child.poll() is not None:
                print(f"jobrelay up: {name} exited with {child.returncode} while starting; stopping", file=sys.stderr)
                return False
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    if not stop.is_set():
        print(f"jobrelay up: the API did not answer {url} within 60s; stopping", file=sys.stderr)
    return False


def _stop_all(children: dict[str, subprocess.Popen[bytes]], redis_server: RedisServer | None, *, exit_code: int) -> int:
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 40
    for child in children.values():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
    if redis_server:
        redis_server.stop()
    print("jobrelay up: stopped", flush=True)
    return exit_code
