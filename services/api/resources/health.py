"""``/healthz`` (the process runs) and ``/readyz`` (its dependencies answer, within a second)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import falcon
import redis
from sqlalchemy import Engine, text

from services.api.errors import problem
from shared.store.disk_space import store_disk_full

#: The longest ``/readyz`` waits for its dependencies' answers; one that has not answered by then is not ready.
READY_TIMEOUT_S = 0.8


class HealthResource:
    public = True

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


class Probe:
    """Asks one dependency whether it answers, in the background, one question at a time.

    NOTE: a stalled store or Redis leaves its question unanswered for as long as the
    client's own timeout (STORE_TIMEOUT_S and more; Redis: 10 s); a probe waits for the
    answer at most as long as /readyz may take, and while a question is still out, the
    next /readyz waits for that one instead of asking again, so a stall never piles up
    waiting connections.
    """

    def __init__(self, name: str, ask: Callable[[], object]) -> None:
        self.name = name
        self.ask = ask
        self._pending: Future[object] | None = None
        self._lock = threading.Lock()

    def question(self) -> Future[object]:
        """The question out now, or a new one."""
        with self._lock:
            if self._pending is None or self._pending.done():
                self._pending = Future()
                threading.Thread(
                    target=self._run, args=(self._pending,), name=f"jobrelay-ready-{self.name}", daemon=True
                ).start()
            return self._pending

    def _run(self, answer: Future[object]) -> None:
        try:
            answer.set_result(self.ask())
        except Exception as exc:
            answer.set_exception(exc)


class ReadyResource:
    public = True

    def __init__(self, engine: Engine, client: redis.Redis, *, timeout_s: float = READY_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self.probes = (Probe("store", lambda: _select_one(engine)), Probe("redis", client.ping))

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        deadline = time.monotonic() + self.timeout_s
        questions = [(probe.name, probe.question()) for probe in self.probes]
        checks = {name: _outcome(question, deadline) for name, question in questions}
        failed = sorted(name for name, outcome in checks.items() if outcome != "ok")
        if failed:
            problem(resp, 503, "Not ready", f"{' and '.join(failed)} did not answer", checks=checks)
            return
        resp.media = {"status": "ready", "checks": checks}


class DiskFull(Exception):
    """The store answers reads but cannot write: its disk is full (``shared/store/disk_space.py``)."""


def _select_one(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    # NOTE: reads go on while the disk is full, but a process that cannot take a job is not ready.
    if store_disk_full(engine):
        raise DiskFull("the job store's disk is full")


def _outcome(question: Future[object], deadline: float) -> str:
    """``ok``, ``Timeout`` (no answer by ``deadline``), or the name of the error the dependency answered."""
    try:
        question.result(timeout=max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        return "Timeout"
    except Exception as exc:
        return type(exc).__name__
    return "ok"
