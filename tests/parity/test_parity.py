"""One scenario suite, two stacks: the in-memory test mode and the real one (Redis, SQLite, a real
worker process) must show the same job views, field by field, times and ids aside.

Each scenario drives a stack through its client (the API's) and returns the views it produced;
the test runs it on both and compares. The error's ``traceback`` is left out too: it names the
frames of the runner (Dramatiq's worker thread, or the test mode's loop).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.parity.parity_tasks  # noqa: F401  (declares the scenarios' tasks in this process)
from jobrelay import ApiInvalidRequest
from services.api.app import create_app
from services.testing.stack import InProcessClient, JobrelayStack
from shared.broker.publishing import build_broker
from shared.redis_server import RedisServer, free_port
from shared.settings import Settings
from shared.store.engine import create_store_engine, migrate
from shared.store.jobs import JobStore
from shared.store.tasks import TaskRegistry

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMES = ("created_at", "scheduled_for", "started_at", "finished_at", "next_attempt_at")
JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
FINAL = ("succeeded", "failed", "cancelled", "expired")


class RealStack:
    """The API app in this process on a real Redis and SQLite, and ``jobrelay worker`` as a process."""

    def __init__(self, redis_url: str, tmp: Path) -> None:
        database_url = f"sqlite:///{tmp / 'jobs.db'}"
        self.settings = Settings(redis_url=redis_url, database_url=database_url, data_dir=tmp, api_auth=False)
        engine = create_store_engine(database_url)
        migrate(engine)
        self.engine = engine
        env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "DATABASE_URL": database_url,
            "DATA_DIR": str(tmp),
            "TASK_MODULES": "tests.parity.parity_tasks",
            "WORKER_METRICS_BIND": f"127.0.0.1:{free_port()}",
            "LOG_JSON": "off",
        }
        self.log = tmp / "worker.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "worker", "--threads", "2", "--grace", "5"],
            env=env, cwd=REPO_ROOT, stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        registry = TaskRegistry(engine, cache_s=0)
        deadline = time.monotonic() + 60
        while registry.get("parity.note") is None or not (tmp / "worker-alive").exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise AssertionError(f"the worker did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)
        app = create_app(self.settings, store=JobStore(engine), registry=registry, broker=build_broker(redis_url))
        self.client = InProcessClient(app)

    def finish(self, job_id: str) -> dict[str, Any]:
        return self.client.wait(job_id, timeout_s=60, poll_s=0.05)  # type: ignore[return-value]

    def advance(self, seconds: float) -> None:
        time.sleep(seconds)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.engine.dispose()


class MemoryStack:
    """The test mode, with the same three verbs."""

    def __init__(self) -> None:
        self.stack = JobrelayStack()
        self.client = self.stack.client

    def finish(self, job_id: str) -> dict[str, Any]:
        return self.stack.run_until_final(job_id)

    def advance(self, seconds: float) -> None:
        self.stack.advance(seconds)
        self.stack.drain()

    def close(self) -> None:
        self.stack.close()


Stack = RealStack | MemoryStack


@pytest.fixture(scope="module")
def real_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealStack]:
    server = RedisServer(tmp_path_factory.mktemp("parity-redis")).start()
    try:
        stack = RealStack(server.url, tmp_path_factory.mktemp("parity-real"))
        try:
            yield stack
        finally:
            stack.close()
    finally:
        server.stop()


def normalized(view: dict[str, Any]) -> dict[str, Any]:
    """The view without its times, its ids (wherever they appear: a callback's args name its job) and tracebacks."""
    return _without_ids({key: value for key, value in view.items() if key not in TIMES})


def _without_ids(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_ids(item) for key, item in value.items() if key != "traceback"}
    if isinstance(value, list):
        return [_without_ids(item) for item in value]
    if isinstance(value, str) and JOB_ID.fullmatch(value):
        return "<id>"
    return value


# -- the scenarios: each returns what it saw -----------------------------------


def submit_and_succeed(stack: Stack) -> list[Any]:
    job = stack.client.submit("parity.echo", {"value": "hello"})
    return [stack.finish(job["id"])]


def validate(stack: Stack) -> list[Any]:
    seen = []
    for args in ({"value": 1, "extra": 2}, {}):
        try:
            stack.client.submit("parity.twice", args)
        except ApiInvalidRequest as exc:
            seen.append(str(exc))
    return seen


def retry(stack: Stack) -> list[Any]:
    return [stack.finish(stack.client.submit("parity.twice", {"value": 21})["id"])]


def fail_and_dead_letter(stack: Stack) -> list[Any]:
    job = stack.finish(stack.client.submit("parity.broken", {})["id"])
    dead = stack.client._call("GET", "/v1/queues/default/dead")
    return [job, [normalized(item) for item in dead["items"] if item["task"] == "parity.broken"]]


def cancel_queued(stack: Stack) -> list[Any]:
    job = stack.client.submit("parity.echo", {"value": 1}, delay_s=600)
    cancelled = stack.client.cancel(job["id"])
    return [cancelled, stack.client.get(job["id"])]


def delay(stack: Stack) -> list[Any]:
    job = stack.client.submit("parity.echo", {"value": "later"}, delay_s=1)
    waiting = stack.client.get(job["id"])
    stack.advance(1.5)
    return [waiting["status"], stack.finish(job["id"])]


def chain(stack: Stack) -> list[Any]:
    body = {"type": "chain", "steps": [{"task": "parity.add", "args": {"amount": 1}}] * 3}
    workflow = stack.client._call("POST", "/v1/workflows", body=body)
    return [stack.finish(job_id) for job_id in workflow["jobs"]]


def chord(stack: Stack) -> list[Any]:
    steps = [{"task": "parity.add", "args": {"amount": n}} for n in (1, 2, 3)]
    body = {"type": "chord", "steps": steps, "callback": {"task": "parity.add", "args": {"amount": 10}}}
    workflow = stack.client._call("POST", "/v1/workflows", body=body)
    views = [stack.finish(job_id) for job_id in workflow["jobs"]]
    return [*views, stack.finish(workflow["callback_job"])]


def callbacks(stack: Stack) -> list[Any]:
    seen = []
    for fail in (False, True):
        job = stack.finish(stack.client.submit("parity.notified", {"fail": fail})["id"])
        seen += [job, stack.finish(job["callback_job_id"])]
    return seen


def progress(stack: Stack) -> list[Any]:
    return [stack.finish(stack.client.submit("parity.progress", {"steps": 3})["id"])]


def result_types(stack: Stack) -> list[Any]:
    values = [None, True, 7, 2.5, "text", [1, "two", None], {"nested": {"list": [1.5]}}]
    return [stack.finish(stack.client.submit("parity.echo", {"value": value})["id"]) for value in values]


SCENARIOS: list[Callable[[Stack], list[Any]]] = [
    submit_and_succeed,
    validate,
    retry,
    fail_and_dead_letter,
    cancel_queued,
    delay,
    chain,
    chord,
    callbacks,
    progress,
    result_types,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda scenario: scenario.__name__)
def test_the_in_memory_stack_shows_what_the_real_one_shows(
    scenario: Callable[[Stack], list[Any]], real_stack: RealStack
) -> None:
    memory = MemoryStack()
    try:
        in_memory = scenario(memory)
    finally:
        memory.close()
    real = scenario(real_stack)

    def shown(seen: list[Any]) -> list[Any]:
        return [normalized(item) if isinstance(item, dict) else item for item in seen]

    assert shown(in_memory) == shown(real)
    assert in_memory  # each scenario saw something
