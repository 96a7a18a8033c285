"""``exports.run``: stream the job store's job rows to JSONL or CSV in result storage.

Rows are read in batches of ``BATCH_ROWS`` through a server-side cursor
(PostgreSQL) or SQLite's lazy cursor and written out as they come, so memory
stays flat however many jobs match. The export reads one snapshot (a count for
progress, then the rows) on a read-only connection to the job store
(``DATABASE_URL``, else ``sqlite:///$DATA_DIR/jobrelay.db``), oldest job first.
Re-running it rewrites the same result file, so a retry is harmless.
"""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args

from sqlalchemy import ColumnElement, func, select

from services.worker.context import report_progress, result_file
from services.worker.tasks.reports import job_store_url, read_only, text_writer
from shared import catalog
from shared.errors import TaskError
from shared.job import JobStatus, rfc3339
from shared.schema import Schema
from shared.store.models import jobs

#: Rows fetched and written per round trip.
BATCH_ROWS = 500
#: The columns exported, in order: what the API shows of a job (no lease or bookkeeping fields).
EXPORT_COLUMNS = (
    "id",
    "task",
    "queue",
    "status",
    "args",
    "result",
    "result_url",
    "error",
    "attempts",
    "max_retries",
    "priority",
    "created_at",
    "scheduled_for",
    "started_at",
    "finished_at",
    "workflow_id",
    "schedule_id",
)
_JSON_COLUMNS = frozenset({"args", "result", "error"})
StatusName = Literal["queued", "scheduled", "running", "retrying", "succeeded", "failed", "cancelled", "expired"]
if set(get_args(StatusName)) != {status.value for status in JobStatus}:
    raise TaskError("exports: StatusName must list every JobStatus")
Timestamp = Annotated[str, Schema(format="date-time")]


class InvalidExport(ValueError):
    """A filter value that cannot be used: retrying cannot help."""


def _moment(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidExport(f"{name}: {value!r} is not an RFC 3339 time") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _conditions(
    status: str | None, task_name: str | None, after: datetime | None, before: datetime | None
) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if status is not None:
        conditions.append(jobs.c.status == status)
    if task_name is not None:
        conditions.append(jobs.c.task == task_name)
    if after is not None:
        conditions.append(jobs.c.created_at >= after)
    if before is not None:
        conditions.append(jobs.c.created_at < before)
    return conditions


def _plain(value: Any) -> Any:
    return rfc3339(value) if isinstance(value, datetime) else value


@catalog.task(
    name="exports.run",
    queue="exports",
    max_retries=3,
    time_limit_s=3600,
    min_backoff_s=5,
    max_backoff_s=600,
    non_retryable=(InvalidExport,),
)
def run(
    format: Literal["jsonl", "csv"] = "jsonl",
    status: StatusName | None = None,
    task: str | None = None,
    created_after: Timestamp | None = None,
    created_before: Timestamp | None = None,
) -> dict[str, Any]:
    """Stream the jobs matching the filters (oldest first) to a JSONL or CSV result file."""
    conditions = _conditions(
        status, task, _moment("created_after", created_after), _moment("created_before", created_before)
    )
    columns = [jobs.c[name] for name in EXPORT_COLUMNS]
    query = select(*columns).where(*conditions).order_by(jobs.c.id).execution_options(yield_per=BATCH_ROWS)
    written = 0
    with read_only(job_store_url(), snapshot=True) as conn:
        total = conn.execute(select(func.count()).select_from(jobs).where(*conditions)).scalar_one()
        report_progress(0, total, "exporting")
        result = conn.execute(query)
        if format == "jsonl":
            with result_file("application/x-ndjson") as handle:
                for batch in result.partitions():
                    for row in batch:
                        line = {name: _plain(value) for name, value in zip(EXPORT_COLUMNS, row, strict=True)}
                        handle.write(json.dumps(line, separators=(",", ":"), default=str).encode() + b"\n")
                    written += len(batch)
                    report_progress(written, max(total, written), "exporting")
        else:
            with result_file("text/csv") as handle, text_writer(handle) as out:
                writer = csv.writer(out)
                writer.writerow(EXPORT_COLUMNS)
                for batch in result.partitions():
                    writer.writerows(
                        [_csv_cell(name, value) for name, value in zip(EXPORT_COLUMNS, row, strict=True)]
                        for row in batch
                    )
                    written += len(batch)
                    report_progress(written, max(total, written), "exporting")
    report_progress(written, written, "done")
    return {"rows": written, "format": format}


def _csv_cell(name: str, value: Any) -> Any:
    """JSON columns as compact JSON text, times as RFC 3339, NULL as an empty cell."""
    if value is None:
        return ""
    if name in _JSON_COLUMNS:
        return json.dumps(value, separators=(",", ":"), default=str)
    return _plain(value)
