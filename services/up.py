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
from pathlib import Path

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


def run(settings: Settings) -> int:
    data_dir = Path(settings.data_dir)
    env = dict(os.environ)
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
    print(f"\njobrelay is up: API at http://{settings.api_bind}  (queues: {', '.join(queues)})", flush=True)
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
