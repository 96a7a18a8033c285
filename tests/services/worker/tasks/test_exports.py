"""``exports.run`` against a real job store (SQLite and PostgreSQL), results in a directory."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from datetime import timedelta

import pytest

from services.worker.context import JobContext
from services.worker.retry_policy import decide
from services.worker.tasks.exports import BATCH_ROWS, EXPORT_COLUMNS, InvalidExport, run
from shared.catalog import default_catalog
from shared.job import JobStatus, utcnow
from shared.results import DirectoryStorage
from shared.settings import Settings
from shared.store.jobs import JobStore
from tests.services.worker.tasks.conftest import ProgressLog
from tests.shared.store.test_jobs import make_job


@pytest.fixture(autouse=True)
def _exports_read_the_test_store(database_url: str, task_env: Callable[..., Settings]) -> None:
    task_env(DATABASE_URL=database_url)


def _jsonl(results: DirectoryStorage, job: JobContext) -> list[dict]:
    body, content_type = results.open(job.job_id)
    assert content_type == "application/x-ndjson"
    return [json.loads(line) for line in body.decode().splitlines()]


def test_every_row_is_exported_in_batches_with_progress(
    store: JobStore, results: DirectoryStorage, job: JobContext
) -> None:
    count = BATCH_ROWS * 2 + 37
    store.insert([make_job(args={"n": i}) for i in range(count)])
    assert run() == {"rows": count, "format": "jsonl"}
    lines = _jsonl(results, job)
    assert len(lines) == count
    assert [line["args"]["n"] for line in lines] == list(range(count))  # oldest first
    assert list(lines[0]) == list(EXPORT_COLUMNS)
    assert lines[0]["created_at"].endswith("Z") and lines[0]["status"] == "queued"
    assert isinstance(job.sink, ProgressLog)
    assert job.sink.calls[0] == {"current": 0, "total": count, "message": "exporting"}
    assert job.sink.calls[-1] == {"current": count, "total": count, "message": "done"}


def test_filters_select_matching_rows(store: JobStore, results: DirectoryStorage, job: JobContext) -> None:
    now = utcnow()
    wanted = [
        make_job(task="emails.send", status=JobStatus.FAILED, error={"type": "EmailRejected", "message": "550"})
        for _ in range(3)
    ]
    store.insert(
        [
            *wanted,
            make_job(task="emails.send", status=JobStatus.SUCCEEDED),
            make_job(task="webhooks.deliver", status=JobStatus.FAILED),
            make_job(task="emails.send", status=JobStatus.FAILED, created_at=now - timedelta(days=2)),
        ]
    )
    after = (now - timedelta(hours=1)).isoformat()
    result = run(status="failed", task="emails.send", created_after=after)
    assert result["rows"] == 3
    lines = _jsonl(results, job)
    assert [line["id"] for line in lines] == [job_.id for job_ in wanted]
    assert lines[0]["error"] == {"type": "EmailRejected", "message": "550"}


def test_csv_has_a_header_and_json_cells(store: JobStore, results: DirectoryStorage, job: JobContext) -> None:
    store.insert([make_job(args={"message": 'say "hi", twice'}), make_job(status=JobStatus.SUCCEEDED, result="ok")])
    assert run(format="csv") == {"rows": 2, "format": "csv"}
    body, content_type = results.open(job.job_id)
    assert content_type == "text/csv"
    header, *rows = list(csv.reader(io.StringIO(body.decode())))
    assert header == list(EXPORT_COLUMNS)
    first = dict(zip(header, rows[0], strict=True))
    assert json.loads(first["args"]) == {"message": 'say "hi", twice'}
    assert first["result"] == "" and first["finished_at"] == ""
    assert json.loads(dict(zip(header, rows[1], strict=True))["result"]) == "ok"


def test_nothing_matching_gives_an_empty_file(store: JobStore, results: DirectoryStorage, job: JobContext) -> None:
    store.insert([make_job()])
    assert run(task="no.such_task")["rows"] == 0
    assert _jsonl(results, job) == []


def test_a_bad_time_fails_without_retry(store: JobStore, job: JobContext) -> None:
    with pytest.raises(InvalidExport) as caught:
        run(created_after="last tuesday")
    assert not decide(default_catalog.get("exports.run"), caught.value, attempts=1, max_retries=3).retry
