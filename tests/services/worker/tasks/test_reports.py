"""``reports.generate`` against a real job store (SQLite and PostgreSQL), results in a directory."""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from services.worker.context import JobContext
from services.worker.retry_policy import decide
from services.worker.tasks.reports import (
    InvalidReport,
    generate,
    job_store_url,
    read_only,
    read_only_engine,
)
from shared.catalog import default_catalog
from shared.job import JobStatus, utcnow
from shared.results import DirectoryStorage
from shared.settings import Settings
from shared.store.jobs import JobStore
from tests.services.worker.tasks.conftest import ProgressLog
from tests.shared.store.test_jobs import make_job

TaskEnv = Callable[..., Settings]


@pytest.fixture(autouse=True)
def _reports_read_the_test_store(database_url: str, task_env: TaskEnv) -> None:
    task_env(DATABASE_URL=database_url)


def _csv(results: DirectoryStorage, job: JobContext) -> list[list[str]]:
    body, content_type = results.open(job.job_id)
    assert content_type == "text/csv"
    return list(csv.reader(io.StringIO(body.decode())))


def test_jobs_by_status_as_csv(store: JobStore, results: DirectoryStorage, job: JobContext) -> None:
    statuses = [JobStatus.SUCCEEDED] * 3 + [JobStatus.FAILED] * 2 + [JobStatus.QUEUED]
    store.insert([make_job(status=status) for status in statuses])
    result = generate(report="jobs_by_status")
    assert result == {"report": "jobs_by_status", "rows": 3, "format": "csv"}
    assert _csv(results, job) == [["status", "jobs"], ["failed", "2"], ["queued", "1"], ["succeeded", "3"]]
    assert isinstance(job.sink, ProgressLog) and job.sink.calls[-1] == {"current": 3, "total": 3, "message": "done"}
    assert job.result_file_type == "text/csv"


def test_jobs_by_task_honours_since(store: JobStore, results: DirectoryStorage, job: JobContext) -> None:
    now = utcnow()
    store.insert(
        [
            make_job(task="emails.send", queue="emails", status=JobStatus.SUCCEEDED, attempts=1),
            make_job(task="emails.send", queue="emails", status=JobStatus.FAILED, attempts=2),
            make_job(task="diagnostics.echo", status=JobStatus.SUCCEEDED, attempts=1),
            make_job(task="old.task", created_at=now - timedelta(days=3)),
        ]
    )
    since = (now - timedelta(days=1)).isoformat()
    assert generate(report="jobs_by_task", params={"since": since})["rows"] == 2
    assert _csv(results, job) == [
        ["task", "queue", "jobs", "succeeded", "failed", "avg_attempts"],
        ["diagnostics.echo", "default", "1", "1", "0", "1.00"],
        ["emails.send", "emails", "2", "1", "1", "1.50"],
    ]


def test_failed_jobs_filters_by_task_pattern_and_limit(
    store: JobStore, results: DirectoryStorage, job: JobContext
) -> None:
    now = utcnow()
    failed = [
        make_job(task="webhooks.deliver", status=JobStatus.FAILED, attempts=4, finished_at=now - timedelta(minutes=i))
        for i in range(3)
    ]
    store.insert([*failed, make_job(task="emails.send", status=JobStatus.FAILED, finished_at=now)])
    generate(report="failed_jobs", params={"task": "webhooks.%", "limit": 2})
    header, *rows = _csv(results, job)
    assert header == ["id", "task", "queue", "attempts", "finished_at"]
    assert [row[0] for row in rows] == [failed[0].id, failed[1].id]
    assert rows[0][3] == "4" and rows[0][4].endswith("Z")


def test_pdf_is_a_valid_multi_page_document(store: JobStore, results: DirectoryStorage, job: JobContext) -> None:
    store.insert([make_job(task=f"bulk.task_{i:03d}") for i in range(150)])
    result = generate(report="jobs_by_task", format="pdf")
    assert result == {"report": "jobs_by_task", "rows": 150, "format": "pdf"}
    pdf, content_type = results.open(job.job_id)
    assert content_type == "application/pdf"
    assert pdf.startswith(b"%PDF-1.4\n") and pdf.rstrip().endswith(b"%%EOF")
    _check_xref(pdf)
    pages = int(re.search(rb"/Type /Pages /Kids \[[^\]]*\] /Count (\d+)", pdf).group(1))  # type: ignore[union-attr]
    assert pages == len(re.findall(rb"/Type /Page\b", pdf)) == 3
    for name in (b"bulk.task_000", b"bulk.task_149", b"avg_attempts", b"Page 3"):
        assert b"(" + name + b")" in pdf
    if shutil.which("pdftotext"):  # a second opinion where poppler is installed; the checks above stand alone
        path = Path(results.root) / job.job_id
        shown = subprocess.run(["pdftotext", str(path), "-"], capture_output=True, check=True, text=True).stdout
        assert "bulk.task_149" in shown


def _check_xref(pdf: bytes) -> None:
    """Every object the cross-reference table lists starts exactly where it says."""
    start = int(pdf[pdf.rindex(b"startxref") :].split()[1])
    assert pdf[start:].startswith(b"xref\n0 ")
    lines = pdf[start:].split(b"\n")
    count = int(lines[1].split()[1])
    entries = lines[2 : 2 + count]
    assert entries[0] == b"0000000000 65535 f "
    for number, entry in enumerate(entries[1:], start=1):
        assert len(entry) == 19 and entry.endswith(b" 00000 n ")
        offset = int(entry[:10])
        assert pdf[offset:].startswith(b"%d 0 obj\n" % number)
    assert re.search(rb"trailer\n<< /Size %d /Root \d+ 0 R" % count, pdf)


def test_empty_report_still_renders(results: DirectoryStorage, job: JobContext, store: JobStore) -> None:
    assert generate(report="jobs_by_status", format="pdf")["rows"] == 0
    pdf, _ = results.open(job.job_id)
    _check_xref(pdf)
    assert b"(No rows.)" in pdf


@pytest.mark.parametrize(
    "params",
    [{"sinse": "2024-01-01"}, {"since": "yesterday"}, {"limit": 0}, {"limit": "10"}, {"task": "x" * 201}],
)
def test_bad_params_fail_without_retry(params: dict, store: JobStore, job: JobContext) -> None:
    with pytest.raises(InvalidReport) as caught:
        generate(report="failed_jobs", params=params)
    assert not decide(default_catalog.get("reports.generate"), caught.value, attempts=1, max_retries=3).retry


def test_reports_database_url_overrides_the_job_store(
    store: JobStore, database_url: str, job: JobContext, task_env: TaskEnv, tmp_path: Path
) -> None:
    store.insert([make_job()])
    task_env(DATABASE_URL=f"sqlite:///{tmp_path / 'elsewhere.db'}", REPORTS_DATABASE_URL=database_url)
    assert generate(report="jobs_by_status")["rows"] == 1


def test_the_connection_cannot_write(store: JobStore, database_url: str) -> None:
    store.insert([make_job()])
    with pytest.raises(DBAPIError), read_only(database_url) as conn:
        conn.execute(text("DELETE FROM jobs"))
    with read_only(database_url) as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM jobs")).scalar_one() == 1
    assert read_only_engine(database_url) is read_only_engine(database_url)


def test_job_store_url_defaults_to_sqlite_under_data_dir(task_env: TaskEnv, tmp_path: Path) -> None:
    task_env(DATABASE_URL="", DATA_DIR=str(tmp_path))
    assert job_store_url() == f"sqlite:///{tmp_path.resolve() / 'jobrelay.db'}"
