"""Every query the API, the console, the gauges and housekeeping run reads rows bounded by its result or batch.

On PostgreSQL the queries run against a database of the module's own holding
``ROWS`` jobs (``bench/store_fill.py``: the mix of states, queues, tasks, tenants
and dead letters of a busy week), analysed, where a missing index would show as a
sequential scan or as a walk through tens of thousands of rows. Each store method
is called for real; every SELECT it sends is run again under ``EXPLAIN (ANALYZE)``
and the rows its scans read are counted and held to a bound that does not grow
with the table. SQLite's planner picks indexes by their shape, so there the plans
of the list queries are checked with ``EXPLAIN QUERY PLAN`` on an empty table.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, text

from bench.store_fill import fill, live_rows, private_database
from services.api.console import queries as console
from services.api.events import Streams
from shared.errors import NotFound
from shared.job import JobStatus, utcnow
from shared.store.dead_letters import DEAD_EXACT_MAX
from shared.store.engine import create_store_engine
from shared.store.jobs import _BY_KEYS_SELECT, JobFilter, JobStore, encode_cursor
from shared.store.models import jobs
from shared.store.pages import SCAN_ROWS, page_query
from shared.store.pushes import PushStore
from shared.store.workflows import WorkflowStore
from tests.conftest import PG_ADMIN_URL

#: Big enough that a filter's rows outnumber a page's scan limit many times over, and that
#: PostgreSQL would scan the table for any condition no index holds.
ROWS = 200_000
LIMIT = 50
#: The most rows one statement of a page reads: the walk and the row lookups, each at most SCAN_ROWS.
PAGE_BOUND = 2 * SCAN_ROWS + 2 * (LIMIT + 1)

#: One value of each list filter; ``expired`` is rare (0.5%), so a walk through the rows of a queue
#: or a task to find a page of them would read ten thousand rows or more.
VALUES: dict[str, Any] = {
    "status": JobStatus.EXPIRED,
    "task": "diagnostics.fail",
    "queue": "default",
    "namespace": "acme",
    "dead": True,
}

SCANS = {"Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Heap Scan", "Bitmap Index Scan"}


# -- PostgreSQL at size ---------------------------------------------------------


@pytest.fixture(scope="module")
def big(postgres_url: str | None) -> Iterator[Engine]:
    """The store's engine on a private database of ``ROWS`` jobs, dropped at the end."""
    if postgres_url is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is required in CI but did not answer")
        pytest.skip("no PostgreSQL reachable")
    with private_database(PG_ADMIN_URL, prefix="jobrelay_test_plans") as url:
        fill(url, ROWS)
        engine = create_store_engine(url)
        try:
            yield engine
        finally:
            engine.dispose()


def statements_of(engine: Engine, call: Callable[[], object]) -> list[tuple[str, Any]]:
    """The SELECTs ``call`` sends through ``engine``, with their parameters."""
    sent: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        call()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert sent, "the call sent no SELECT"
    return sent


def rows_read(node: dict[str, Any]) -> int:
    """Rows the scans of a plan node and its children read (kept, filtered out, rechecked, in every loop),
    the system catalogs' aside."""
    read = 0
    catalog = str(node.get("Relation Name", node.get("Index Name", ""))).startswith("pg_")
    if node["Node Type"] in SCANS and not catalog:
        per_loop = node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
        per_loop += node.get("Rows Removed by Index Recheck", 0)
        read += per_loop * node["Actual Loops"]
    return read + sum(rows_read(child) for child in node.get("Plans", []))


def indexes_of(node: dict[str, Any]) -> set[str]:
    found = {node["Index Name"]} if "Index Name" in node else set()
    if node["Node Type"] == "Seq Scan":
        found.add(f"Seq Scan on {node['Relation Name']}")
    for child in node.get("Plans", []):
        found |= indexes_of(child)
    return found


def explain(engine: Engine, statement: str, parameters: Any) -> dict[str, Any]:
    with engine.connect() as conn:
        plan = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", parameters).scalar_one()
        conn.rollback()
    return dict(plan[0]["Plan"])


def assert_bounded(engine: Engine, call: Callable[[], object], bound: int) -> list[dict[str, Any]]:
    """Every SELECT of ``call`` reads at most ``bound`` rows and scans no table; their plans."""
    plans = []
    for statement, parameters in statements_of(engine, call):
        plan = explain(engine, statement, parameters)
        used = indexes_of(plan)
        assert not any(name.startswith("Seq Scan on jobs") for name in used), f"{statement}\n{used}"
        assert rows_read(plan) <= bound, f"read {rows_read(plan)} rows (bound {bound}): {statement}\n{used}"
        plans.append(plan)
    return plans


def middle_cursor(engine: Engine) -> str:
    with engine.connect() as conn:
        middle = conn.execute(text("SELECT id FROM jobs ORDER BY id OFFSET :half LIMIT 1"), {"half": ROWS // 2})
        return encode_cursor(middle.scalar_one())


COMBINATIONS = [names for size in range(len(VALUES) + 1) for names in itertools.combinations(VALUES, size)]


@pytest.mark.parametrize("names", COMBINATIONS, ids=lambda names: "+".join(names) or "none")
def test_every_list_filter_combination_reads_a_bounded_number_of_rows(big: Engine, names: tuple[str, ...]) -> None:
    store = JobStore(big)
    filters = JobFilter(**{name: VALUES[name] for name in names})
    for cursor in (None, middle_cursor(big)):
        assert_bounded(big, lambda: store.page(filters, limit=LIMIT, cursor=cursor), PAGE_BOUND)  # noqa: B023


@pytest.mark.parametrize(
    "filters",
    [
        JobFilter(workflow_id="0190c000-0000-7000-8000-000000000100"),
        JobFilter(workflow_id="0190c000-0000-7000-8000-000000000100", status=JobStatus.SUCCEEDED),
        JobFilter(schedule_id="nightly-report"),
        JobFilter(schedule_id="nightly-report", status=JobStatus.FAILED),
        JobFilter(created_after=utcnow() - timedelta(days=3)),
        JobFilter(created_after=utcnow() - timedelta(days=3), queue="emails", task="emails.send"),
        JobFilter(queue="nosuch", status=JobStatus.FAILED, namespace="acme"),
    ],
    ids=[
        "workflow",
        "workflow+status",
        "schedule",
        "schedule+status",
        "created_after",
        "created_after+queue+task",
        "nothing matches",
    ],
)
def test_the_other_list_filters_read_a_bounded_number_of_rows(big: Engine, filters: JobFilter) -> None:
    store = JobStore(big)
    assert_bounded(big, lambda: store.page(filters, limit=LIMIT), PAGE_BOUND)


def test_a_queue_in_one_status_walks_its_own_index_and_reads_only_the_page(big: Engine) -> None:
    # Given the example, a rare status in a big queue
    store = JobStore(big)
    filters = JobFilter(queue="default", status=JobStatus.EXPIRED)
    # Then the page reads its own rows through (queue, status, id), not the queue's rows
    [plan] = assert_bounded(big, lambda: store.page(filters, limit=LIMIT), LIMIT + 1)
    assert "ix_jobs_queue_status_id" in indexes_of(plan)


def test_a_page_of_a_rare_combination_stops_at_its_scan_limit_and_goes_on(big: Engine) -> None:
    # Given a queue and a task that never go together (each task has its own queue)
    store = JobStore(big)
    filters = JobFilter(queue="emails", task="diagnostics.echo")
    # When the pages are followed
    page = store.page(filters, limit=LIMIT)
    # Then each is empty, with a cursor past the rows it read, until the queue's rows run out
    assert page.items == [] and page.next_cursor is not None
    pages = 1
    while page.next_cursor is not None:
        page = store.page(filters, limit=LIMIT, cursor=page.next_cursor)
        assert page.items == []
        pages += 1
    emails = ROWS // 7
    assert pages == emails // SCAN_ROWS + 1


def test_a_dead_letter_list_and_the_dead_letter_page_read_a_bounded_number_of_rows(big: Engine) -> None:
    store = JobStore(big)
    assert_bounded(big, lambda: store.page(JobFilter(queue="default", dead=True), limit=LIMIT), LIMIT + 1)
    assert_bounded(big, lambda: store.page(JobFilter(dead=True), limit=LIMIT), PAGE_BOUND)
    assert_bounded(big, lambda: console.dead_groups(store), 2 * console.DEAD_GROUPS_SCAN)


def test_queue_counts_read_the_running_rows_and_at_most_the_exact_bound_of_dead_letters(big: Engine) -> None:
    # GET /v1/queues and the queue gauges
    store = JobStore(big)
    queues = 4
    assert_bounded(big, store.queue_counts, live_rows(ROWS) + queues * (DEAD_EXACT_MAX + 2))
    counts = store.queue_counts()
    with big.connect() as conn:
        exact = dict(conn.execute(text("SELECT queue, count(*) FROM jobs WHERE dead GROUP BY queue")).all())
        running = dict(conn.execute(text("SELECT queue, count(*) FROM jobs WHERE status = 'running' GROUP BY 1")).all())
    assert {queue: c["running"] for queue, c in counts.items() if c["running"]} == running
    for queue, n in exact.items():
        if n <= DEAD_EXACT_MAX:
            assert counts[queue]["dead"] == n, (queue, counts[queue], n)
        else:
            # Past the exact bound, the planner's estimate: within a fifth of the truth on this mix.
            assert abs(counts[queue]["dead"] - n) <= n / 5, (queue, counts[queue], n)
    assert any(n > DEAD_EXACT_MAX for n in exact.values()) and any(n <= DEAD_EXACT_MAX for n in exact.values())


def test_waiting_counts_and_the_console_totals_read_the_live_rows_only(big: Engine) -> None:
    store = JobStore(big)
    live = live_rows(ROWS)
    assert_bounded(big, lambda: store.count_waiting("acme"), live)
    assert_bounded(big, lambda: console.state_totals(store), live + 10)
    assert_bounded(big, lambda: console.running_by_owner(store), live)


def test_the_console_lists_read_a_bounded_number_of_rows(big: Engine) -> None:
    store = JobStore(big)
    now = utcnow()
    searches = [
        console.JobQuery(search="user42@example.org"),
        console.JobQuery(search="nothing-has-this"),
        console.JobQuery(search="key-1000"),
        console.JobQuery(base=JobFilter(queue="emails"), created_before=now - timedelta(days=3)),
        console.JobQuery(
            base=JobFilter(queue="emails", status=JobStatus.FAILED), created_before=now - timedelta(days=3)
        ),
    ]
    for query in searches:
        assert_bounded(big, lambda: console.page_jobs(store, query), PAGE_BOUND)  # noqa: B023
    assert_bounded(big, lambda: console.recent_fires(store, "nightly-report"), LIMIT + 1)
    assert_bounded(big, lambda: console.recent_workflows(store), LIMIT + 1)


def test_the_charts_read_the_rows_of_their_hour_only(big: Engine) -> None:
    # The charts cover the last hour: the jobs made in it (the id's time bound) and finished in it (its index).
    store = JobStore(big)
    with big.connect() as conn:
        hour = conn.execute(text("SELECT count(*) FROM jobs WHERE finished_at >= now() - interval '61 minutes'"))
        finished = hour.scalar_one()
    bound = 2 * (finished + live_rows(ROWS))
    assert_bounded(big, lambda: console.rates(store), bound)
    [plan] = assert_bounded(big, lambda: console.duration_percentiles(store), bound)
    assert "ix_jobs_finished_at" in indexes_of(plan)


def test_housekeeping_reads_its_batch_or_the_live_rows(big: Engine) -> None:
    store = JobStore(big)
    now = utcnow()
    live = live_rows(ROWS)
    assert_bounded(big, lambda: store.unpublished(older_than=now), live)
    assert_bounded(big, lambda: store.waiting_published(older_than=now), live)
    assert_bounded(big, lambda: store.lease_expired(before=now + timedelta(minutes=5)), live)
    assert_bounded(big, lambda: store.outbox_left(older_than=now), 10)
    assert_bounded(big, lambda: WorkflowStore(big).running_ids(updated_before=now), 20)
    # The push relay reads the final rows still to announce, by the partial index of the rows that have one
    assert_bounded(big, lambda: PushStore(big).due(200), 2 * 200)


def test_an_event_stream_of_a_queue_reads_two_bounded_pages_per_poll(big: Engine) -> None:
    streams = Streams(JobStore(big), max_streams=1, max_duration_s=1)
    for queue, namespace in [("default", None), ("default", "acme"), (None, "acme"), (None, None)]:
        assert_bounded(big, lambda q=queue, n=namespace: streams.window(q, n, set()), PAGE_BOUND)


def test_a_job_and_an_idempotency_key_are_one_index_probe(big: Engine) -> None:
    store = JobStore(big)
    with big.connect() as conn:
        job_id = conn.execute(text("SELECT id FROM jobs WHERE idempotency_key = 'key-1000'")).scalar_one()
    assert_bounded(big, lambda: store.get(job_id), 1)
    with pytest.raises(NotFound):
        store.get("01a20c37-0000-7000-8000-000000000000")
    with big.connect() as conn:
        sql = str(_BY_KEYS_SELECT.compile(big))
        plan = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", {"keys": ["key-1000", "key-50"]})
        [node] = plan.scalar_one()
    assert "ux_jobs_idempotency_key" in indexes_of(node["Plan"]) and rows_read(node["Plan"]) <= 2


# -- SQLite and the shape of each plan -----------------------------------------------------


def sqlite_plan(engine: Engine, filters: JobFilter, *, cursor: bool) -> str:
    query = page_query(
        filters, limit=LIMIT, cursor=encode_cursor("01a20c37-0000-7000-8000-000000000000") if cursor else None
    )
    compiled = query.statement(engine.dialect.name).compile(engine, compile_kwargs={"literal_binds": True})
    with engine.connect() as conn:
        return "\n".join(str(row[-1]) for row in conn.execute(text(f"EXPLAIN QUERY PLAN {compiled}")))


@pytest.mark.parametrize("names", COMBINATIONS, ids=lambda names: "+".join(names) or "none")
def test_sqlite_walks_an_index_for_every_combination(sqlite_url: str, names: tuple[str, ...]) -> None:
    from shared.store.engine import migrate

    engine = create_store_engine(sqlite_url)
    migrate(engine)
    filters = JobFilter(**{name: VALUES[name] for name in names})
    for cursor in (False, True):
        text_plan = sqlite_plan(engine, filters, cursor=cursor)
        lines = [line for line in text_plan.splitlines() if " jobs" in line]
        # "SCAN jobs" alone is a full table scan; "USING INDEX" / "USING ... PRIMARY KEY" is not.
        assert lines and all("USING" in line for line in lines), f"{names}: {text_plan}"
        windowed = page_query(filters, limit=LIMIT, cursor=None).window is not None
        if not windowed:
            assert "TEMP B-TREE" not in text_plan, f"{names} sorts in memory: {text_plan}"
    engine.dispose()


def test_the_walk_takes_the_index_holding_most_filters() -> None:
    def walked(**values: Any) -> str:
        indexed = page_query(JobFilter(**values), limit=LIMIT, cursor=None).indexed
        return " ".join(sorted(str(condition.left.name) for condition in indexed if hasattr(condition, "left")))

    assert walked(queue="q", status=JobStatus.FAILED, task="t") == "queue status"
    assert walked(queue="q", dead=True, task="t") == "queue"  # with ``dead``: ix_jobs_dead
    assert walked(task="t", namespace="n") == "task"
    assert walked(workflow_id="w", queue="q") == "workflow_id"
    assert walked(dead=True) == "status"  # a dead letter is a failed job
    assert page_query(replace(JobFilter(), queue="q"), limit=LIMIT, cursor=None).window is None


def test_the_jobs_table_has_the_indexes_the_plans_rely_on() -> None:
    names = {index.name for index in jobs.indexes}
    assert {"ix_jobs_status_id", "ix_jobs_task_id", "ix_jobs_queue_id", "ix_jobs_queue_status_id",
            "ix_jobs_workflow_id", "ix_jobs_schedule_id", "ix_jobs_dead", "ix_jobs_namespace_id",
            "ix_jobs_finished_at"} <= names  # fmt: skip


PARTIAL = ["ix_jobs_workflow_id", "ix_jobs_schedule_id", "ux_jobs_idempotency_key", "ix_jobs_lease_owner",
           "ix_jobs_finished_at"]  # fmt: skip


def test_indexes_on_mostly_null_columns_leave_the_null_rows_out(engine: Engine) -> None:
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = conn.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'jobs'"))
        else:
            rows = conn.execute(text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'jobs'"))
        definitions = {name: sql for name, sql in rows}
    for name in PARTIAL:
        assert "IS NOT NULL" in definitions[name], definitions[name]
