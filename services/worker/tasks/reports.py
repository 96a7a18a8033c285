"""``reports.generate``: a named read-only query, rendered to CSV or PDF in result storage.

Reports are defined here, never submitted: a caller picks one by name and may
set only the parameters it declares, which are bound, never spliced into SQL.
They read the job store's ``jobs`` table through ``REPORTS_DATABASE_URL`` (a
read replica, say), which defaults to the job store itself (``DATABASE_URL``,
else ``sqlite:///$DATA_DIR/jobrelay.db``), on a connection that cannot write;
both come from the worker's settings.

=================  ===============================================  ==================
report             columns                                          params
=================  ===============================================  ==================
``jobs_by_status`` status, jobs                                     since
``jobs_by_task``   task, queue, jobs, succeeded, failed,            since
                   avg_attempts
``failed_jobs``    id, task, queue, attempts, finished_at           since, task, limit
=================  ===============================================  ==================

To add one: an entry in ``REPORTS`` and its name in ``ReportName``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from sqlalchemy import Connection, Engine, Float, Integer, String, bindparam, event, text
from sqlalchemy.types import TypeEngine

from services.worker.context import current_settings, report_progress, result_file
from services.worker.tasks.pdf import write_table_pdf
from shared.catalog import task
from shared.errors import TaskError
from shared.job import rfc3339
from shared.store.engine import create_store_engine
from shared.store.models import UtcDateTime

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ParamKind = Literal["datetime", "int", "str"]
_BIND_TYPES: dict[str, TypeEngine[Any]] = {"datetime": UtcDateTime(), "int": Integer(), "str": String()}


class InvalidReport(ValueError):
    """An unknown parameter or a value of the wrong kind: retrying cannot help."""


@dataclass(frozen=True)
class Param:
    kind: ParamKind
    default: Any
    description: str
    minimum: int | None = None
    maximum: int | None = None


@dataclass(frozen=True)
class Report:
    """One query: its SQL (bound ``:name`` parameters only), result columns with their types, parameters."""

    title: str
    sql: str
    columns: dict[str, TypeEngine[Any]]
    params: dict[str, Param] = field(default_factory=dict)


_SINCE = Param("datetime", EPOCH, "only jobs created at or after this RFC 3339 time")
ReportName = Literal["jobs_by_status", "jobs_by_task", "failed_jobs"]
REPORTS: dict[str, Report] = {
    "jobs_by_status": Report(
        title="Jobs by status",
        sql="SELECT status, COUNT(*) AS jobs FROM jobs WHERE created_at >= :since GROUP BY status ORDER BY status",
        columns={"status": String(), "jobs": Integer()},
        params={"since": _SINCE},
    ),
    "jobs_by_task": Report(
        title="Jobs by task",
        sql=(
            "SELECT task, queue, COUNT(*) AS jobs,"
            " SUM(CASE WHEN status = 'succeeded' THEN 1 ELSE 0 END) AS succeeded,"
            " SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS failed,"
            " AVG(attempts) AS avg_attempts"
            " FROM jobs WHERE created_at >= :since GROUP BY task, queue ORDER BY task, queue"
        ),
        columns={
            "task": String(),
            "queue": String(),
            "jobs": Integer(),
            "succeeded": Integer(),
            "failed": Integer(),
            "avg_attempts": Float(),
        },
        params={"since": _SINCE},
    ),
    "failed_jobs": Report(
        title="Failed jobs",
        sql=(
            "SELECT id, task, queue, attempts, finished_at FROM jobs"
            " WHERE status = 'failed' AND created_at >= :since AND task LIKE :task"
            " ORDER BY finished_at DESC, id DESC LIMIT :limit"
        ),
        columns={
            "id": String(),
            "task": String(),
            "queue": String(),
            "attempts": Integer(),
            "finished_at": UtcDateTime(),
        },
        params={
            "since": _SINCE,
            "task": Param("str", "%", "an SQL LIKE pattern on the task name, e.g. 'emails.%'"),
            "limit": Param("int", 1000, "at most this many rows, newest first", minimum=1, maximum=100_000),
        },
    ),
}
if set(get_args(ReportName)) != set(REPORTS):
    raise TaskError("reports: ReportName and REPORTS must list the same reports")


# -- read-only access to the job store, shared with exports ----------------------------------------

_engines: dict[tuple[int, str], Engine] = {}
_engines_lock = threading.Lock()


def job_store_url() -> str:
    """The job store's URL as the services compute it: ``DATABASE_URL``, else SQLite under ``DATA_DIR``."""
    return current_settings().effective_database_url


def reports_database_url() -> str:
    """``REPORTS_DATABASE_URL``, else the job store."""
    return current_settings().effective_reports_database_url


def _query_only(dbapi_conn: Any, _record: Any) -> None:
    if isinstance(dbapi_conn, sqlite3.Connection):
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA query_only = ON")
        cursor.close()


def read_only_engine(url: str) -> Engine:
    """One engine per URL per process (a forked child makes its own), used for reading only."""
    key = (os.getpid(), url)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            # NOTE: a report may read for longer than STORE_TIMEOUT_S; its task's time limit bounds it.
            engine = create_store_engine(url, long_statements=True)
            event.listen(engine, "connect", _query_only)
            _engines[key] = engine
        return engine


def dispose_engines() -> None:
    """Close every cached engine (tests; a process about to exit)."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


@contextlib.contextmanager
def read_only(url: str, *, snapshot: bool = False) -> Iterator[Connection]:
    """A transaction that cannot write (SQLite ``query_only``, PostgreSQL ``READ ONLY``).

    ``snapshot`` makes every statement see the same data (PostgreSQL
    ``REPEATABLE READ``; a SQLite read transaction is a snapshot already).
    """
    with read_only_engine(url).connect() as conn:
        if conn.dialect.name == "postgresql":
            options: dict[str, Any] = {"postgresql_readonly": True}
            if snapshot:
                options["isolation_level"] = "REPEATABLE READ"
            conn.execution_options(**options)
        with conn.begin():
            yield conn


@contextlib.contextmanager
def text_writer(handle: Any) -> Iterator[io.TextIOWrapper]:
    """UTF-8 text over a binary result file, detached (not closed) at the end."""
    wrapper = io.TextIOWrapper(handle, encoding="utf-8", newline="")
    try:
        yield wrapper
    finally:
        wrapper.flush()
        wrapper.detach()


# -- the task ----------------------------------------------------------------------------------------


def bind_params(report: Report, given: dict[str, Any]) -> dict[str, Any]:
    """The values to bind: each declared parameter from ``given`` (checked) or its default."""
    unknown = sorted(set(given) - set(report.params))
    if unknown:
        allowed = ", ".join(sorted(report.params)) or "none"
        raise InvalidReport(f"params: unknown parameter {unknown[0]!r} (allowed: {allowed})")
    values: dict[str, Any] = {}
    for name, param in report.params.items():
        values[name] = param.default if given.get(name) is None else _convert(name, param, given[name])
    return values


def _convert(name: str, param: Param, value: Any) -> Any:
    if param.kind == "datetime":
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError:
            raise InvalidReport(f"params.{name}: {value!r} is not an RFC 3339 time") from None
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
    if param.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidReport(f"params.{name}: must be an integer")
        if (param.minimum is not None and value < param.minimum) or (
            param.maximum is not None and value > param.maximum
        ):
            raise InvalidReport(f"params.{name}: must be between {param.minimum} and {param.maximum}")
        return value
    if not isinstance(value, str) or len(value) > 200:
        raise InvalidReport(f"params.{name}: must be a string of at most 200 characters")
    return value


def cell(value: Any) -> str:
    """One value as text, the same in CSV and PDF and on SQLite and PostgreSQL."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return rfc3339(value) or ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


@task(
    name="reports.generate",
    queue="reports",
    max_retries=3,
    time_limit_s=900,
    min_backoff_s=5,
    max_backoff_s=600,
    non_retryable=(InvalidReport,),
)
def generate(
    report: ReportName,
    format: Literal["csv", "pdf"] = "csv",
    params: dict[str, str | int] = {},  # noqa: B006 - the JSON Schema default; never mutated
) -> dict[str, Any]:
    """Run a named read-only report over the job store and store it as CSV or PDF (the job's result file)."""
    definition = REPORTS.get(report)
    if definition is None:
        raise InvalidReport(f"report: unknown report {report!r} (known: {', '.join(REPORTS)})")
    values = bind_params(definition, params)
    statement = (
        text(definition.sql)
        .bindparams(*(bindparam(name, type_=_BIND_TYPES[p.kind]) for name, p in definition.params.items()))
        .columns(**definition.columns)
    )
    columns = list(definition.columns)
    count = 0
    report_progress(0, None, "querying")
    with read_only(reports_database_url()) as conn:
        result = conn.execute(statement, values)

        def rows() -> Iterator[list[str]]:
            nonlocal count
            for row in result:
                count += 1
                yield [cell(value) for value in row]

        if format == "csv":
            with result_file("text/csv") as handle, text_writer(handle) as out:
                writer = csv.writer(out)
                writer.writerow(columns)
                writer.writerows(rows())
        else:
            with result_file("application/pdf") as handle:
                write_table_pdf(
                    handle, title=definition.title, subtitle=_subtitle(report, values), columns=columns, rows=rows()
                )
    report_progress(count, count, "done")
    return {"report": report, "rows": count, "format": format}


def _subtitle(report: str, values: dict[str, Any]) -> str:
    shown: Iterable[str] = (f"{name}={cell(value)}" for name, value in values.items())
    generated = rfc3339(datetime.now(UTC))
    return f"{report} - generated {generated}" + (f" - {', '.join(shown)}" if values else "")
