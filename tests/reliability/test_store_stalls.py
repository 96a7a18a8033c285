"""A PostgreSQL that stalls, locks or drops everything: answers within STORE_TIMEOUT_S, and the stack carries on.

The stack (gunicorn's gevent API, a worker, a scheduler) reaches a database of
this module's own through a ``TcpProxy``, which stalls or black-holes it for the
stack alone; the test reads and locks the database directly. A schedule firing
every second and a job running across the fault show the scheduler and the
worker resuming once the proxy heals.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, make_url, text

from tests.conftest import PG_ADMIN_URL
from tests.reliability.cluster import Cluster
from tests.reliability.effects_db import connect
from tests.reliability.proxy import TcpProxy
from tests.reliability.scenarios import FAST
from tests.reliability.store_stalls import store_stalls

pytestmark = pytest.mark.timeout(240)

STORE_TIMEOUT_S = 2.0
#: What a 503 may take beyond STORE_TIMEOUT_S: the client's grace (1 s) and a loaded machine's slack.
MARGIN_S = 2.5
#: /readyz answers within 0.8 s; the rest is a loaded machine's slack.
READY_WITHIN_S = 1.5
TICK_KEY = "every-second"


@dataclass
class Stack:
    cluster: Cluster
    proxy: TcpProxy
    #: The database itself, not through the proxy.
    direct: Engine


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, postgres_url: str | None) -> Iterator[Stack]:
    if postgres_url is None:
        pytest.skip("no PostgreSQL reachable")
    admin_url = make_url(PG_ADMIN_URL)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"jobrelay_stalls_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    proxy = TcpProxy(admin_url.host or "127.0.0.1", admin_url.port or 5432).start()
    direct = create_engine(admin_url.set(database=name))
    url = admin_url.set(host="127.0.0.1", port=proxy.port, database=name).render_as_string(hide_password=False)
    env = {**FAST.env, "STORE_TIMEOUT_S": f"{STORE_TIMEOUT_S:g}", "API_WORKERS": "1", "WORKER_DEAD_AFTER_S": "10"}
    cluster = Cluster(tmp_path_factory.mktemp("stalls"), database_url=url, env=env, schedulers=1, worker_processes=1)
    try:
        with cluster:
            status, _ = cluster.call(
                "POST",
                "/v1/schedules",
                {"id": "tick", "task": "reliability.effect", "args": {"key": TICK_KEY}, "interval_s": 1},
            )
            assert status == 201
            yield Stack(cluster, proxy, direct)
    finally:
        proxy.close()
        direct.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    answer = call()
    return answer, time.monotonic() - started


def submit(cluster: Cluster, key: str, work_ms: int = 0) -> tuple[int, Any]:
    return cluster.call(
        "POST", "/v1/jobs", {"task": "reliability.effect", "args": {"key": key, "work_ms": work_ms}}, timeout_s=60
    )


def ready(cluster: Cluster) -> tuple[int, Any]:
    return cluster.call("GET", "/readyz", token=None, timeout_s=30)


def in_background(call: Callable[[], Any]) -> Future[Any]:
    answer: Future[Any] = Future()

    def run() -> None:
        try:
            answer.set_result(timed(call))
        except BaseException as exc:
            answer.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return answer


def wait_for(what: str, check: Callable[[], bool], *, timeout_s: float) -> float:
    """Poll ``check`` until true; how long it took."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout_s, f"{what}: not within {timeout_s}s"
        time.sleep(0.1)
    return time.monotonic() - started


def job_status(stack: Stack, job_id: str) -> str:
    with stack.direct.connect() as conn:
        return str(conn.execute(text("SELECT status FROM jobs WHERE id = :id"), {"id": job_id}).scalar_one())


def finished_runs_since(stack: Stack, key: str, since: float) -> int:
    conn = connect(stack.cluster.effects_db)
    try:
        query = "SELECT count(*) FROM executions WHERE key = ? AND started > ? AND ended IS NOT NULL"
        return int(conn.execute(query, (key, since)).fetchone()[0])
    finally:
        conn.close()


def runs_started(stack: Stack, job_id: str) -> int:
    conn = connect(stack.cluster.effects_db)
    try:
        return int(conn.execute("SELECT count(*) FROM executions WHERE job_id = ?", (job_id,)).fetchone()[0])
    finally:
        conn.close()


def assert_carries_on(stack: Stack, healed_at: float) -> None:
    """After the fault: ready again, a new job accepted and run, the schedule firing again."""
    back_s = wait_for("/readyz ready again", lambda: ready(stack.cluster)[0] == 200, timeout_s=30)
    print(f"ready again {back_s:.2f}s after the heal")
    status, job = submit(stack.cluster, f"after-{uuid.uuid4().hex[:8]}")
    assert status == 202, job
    wait_for("a job submitted after the heal", lambda: job_status(stack, job["id"]) == "succeeded", timeout_s=60)

    def ticked() -> bool:
        return finished_runs_since(stack, TICK_KEY, healed_at) > 0

    wait_for("a schedule tick after the heal", ticked, timeout_s=60)


def test_a_locked_jobs_table_answers_503_after_the_timeout(stack: Stack) -> None:
    # Given another session holding the jobs table in ACCESS EXCLUSIVE mode
    with stack.direct.connect() as holder:
        holder.execute(text("SET lock_timeout = '20s'"))
        holder.execute(text("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE"))
        try:
            # When jobs are submitted, Then each is refused with 503 after about STORE_TIMEOUT_S
            for _ in range(2):
                (status, problem), took = timed(lambda: submit(stack.cluster, "locked-out"))
                print(f"submit during the lock: {status} in {took:.2f}s")
                assert status == 503, problem
                assert STORE_TIMEOUT_S - 0.5 < took < STORE_TIMEOUT_S + MARGIN_S
            # And the store still answers: /readyz says ready, at once
            (status, body), took = timed(lambda: ready(stack.cluster))
            print(f"/readyz during the lock: {status} in {took:.2f}s")
            assert status == 200 and took < READY_WITHIN_S, body
        finally:
            holder.rollback()
    assert_carries_on(stack, time.time())


def test_a_black_holed_store_answers_503_and_readyz_within_a_second(stack: Stack) -> None:
    cluster = stack.cluster
    # Given a job running in the worker (its end is written while the store is away)
    status, running = submit(cluster, f"across-{uuid.uuid4().hex[:8]}", work_ms=1500)
    assert status == 202
    wait_for("the job to start", lambda: runs_started(stack, running["id"]) > 0, timeout_s=30)
    # When every packet to PostgreSQL is lost, on open connections and new ones
    stack.proxy.black_hole()
    try:
        # Then a submit already waiting on the store is refused with 503 after about STORE_TIMEOUT_S
        in_flight = in_background(lambda: submit(cluster, "black-holed"))
        # And meanwhile, in the same gevent process, /readyz says not ready within a second
        (status, body), took = timed(lambda: ready(cluster))
        print(f"/readyz in the black hole: {status} in {took:.2f}s, {body.get('checks')}")
        assert status == 503 and body["checks"] == {"store": "Timeout", "redis": "ok"}
        assert took < READY_WITHIN_S
        (status, problem), took = in_flight.result(timeout=60)
        print(f"submit in the black hole: {status} in {took:.2f}s")
        assert status == 503, problem
        assert took < STORE_TIMEOUT_S + MARGIN_S
        (status, problem), took = timed(lambda: submit(cluster, "black-holed"))
        print(f"next submit in the black hole: {status} in {took:.2f}s")
        assert status == 503 and took < STORE_TIMEOUT_S + MARGIN_S
        # And /readyz keeps answering within a second while a probe is still out
        for _ in range(3):
            (status, _), took = timed(lambda: ready(cluster))
            assert status == 503 and took < READY_WITHIN_S
    finally:
        stack.proxy.restore()
    healed_at = time.time()
    # Then the job that ran across the fault ends succeeded (its end was written once the store was back)
    wait_for("the job across the fault", lambda: job_status(stack, running["id"]) == "succeeded", timeout_s=60)
    assert runs_started(stack, running["id"]) == 1
    assert_carries_on(stack, healed_at)


def test_a_stalled_store_answers_503_and_readyz_within_a_second(stack: Stack) -> None:
    cluster = stack.cluster
    # Given PostgreSQL's traffic held, as a server that hangs does
    stack.proxy.stall()
    try:
        # When a job is submitted, Then it is refused with 503 after about STORE_TIMEOUT_S
        (status, problem), took = timed(lambda: submit(cluster, "stalled"))
        print(f"submit in the stall: {status} in {took:.2f}s")
        assert status == 503 and took < STORE_TIMEOUT_S + MARGIN_S, problem
        # And /readyz says not ready within a second
        (status, body), took = timed(lambda: ready(cluster))
        print(f"/readyz in the stall: {status} in {took:.2f}s, {body.get('checks')}")
        assert status == 503 and body["checks"]["store"] != "ok" and took < READY_WITHIN_S
        # And submits arriving one after another meanwhile wait no longer each: none queues behind
        # another's failure (the task catalog's read, the group commit)
        with ThreadPoolExecutor(8) as pool:
            burst = []
            for _ in range(8):
                burst.append(pool.submit(timed, lambda: submit(cluster, "stalled")))
                time.sleep(0.25)
            answers = [future.result(timeout=60) for future in burst]
        print(f"a burst of submits in the stall: {sorted(round(took, 2) for _, took in answers)}")
        assert {status for (status, _), _ in answers} == {503}
        assert max(took for _, took in answers) < STORE_TIMEOUT_S + MARGIN_S
    finally:
        stack.proxy.restore()
    assert_carries_on(stack, time.time())


def test_submissions_under_load_through_every_stall_end_final_exactly_once(stack: Stack) -> None:
    # Given clients submitting steadily, When the jobs table is locked, then PostgreSQL's traffic held, then
    # its packets lost (make chaos's "SQL store stalled" at the fast form's size)
    report = store_stalls(stack.cluster, dataclasses.replace(FAST, jobs=150, outage_s=3.0), stack.proxy, stack.direct)
    print(report.summary())
    # Then every accepted job is final exactly once, /readyz answered within its bound and said not ready
    # while the store could not answer
    assert report.accepted == report.submitted == 150
    assert (report.lost, report.duplicates, report.violations) == (0, 0, [])
