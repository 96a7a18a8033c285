"""Result storage on S3 across the whole stack: worker processes write to moto's server, the API reads it back.

Two stacks: one whose ``RESULT_STORAGE_URL`` is a bucket on the test server,
one whose S3 endpoint is a port where nothing listens.
"""

from __future__ import annotations

import csv
import io
import json
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from shared.ids import new_id
from shared.job import JobStatus
from shared.redis_server import free_port
from shared.store.engine import create_store_engine
from shared.store.jobs import JobStore
from tests.conftest import FOREIGN_AWS_VARIABLES, aws_environment, s3_client
from tests.e2e.conftest import Stack, start_stack, stop_stack
from tests.shared.store.test_jobs import make_job

#: Above this a JSON result leaves the row for result storage (low, so a small echo is enough).
INLINE_MAX_BYTES = 1024


@dataclass
class S3Stack:
    stack: Stack
    bucket: str
    s3: Any


@dataclass
class Response:
    status: int
    content_type: str
    #: Names in lower case.
    headers: dict[str, str]
    body: bytes


def fetch(stack: Stack, path: str) -> Response:
    """A GET whose body is returned as bytes (``Stack.request`` reads JSON only)."""
    req = urllib.request.Request(stack.base_url + path, headers={"Authorization": f"Bearer {stack.token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return Response(resp.status, resp.headers["Content-Type"], _lower(resp.headers.items()), resp.read())
    except urllib.error.HTTPError as exc:
        return Response(exc.code, exc.headers["Content-Type"], _lower(exc.headers.items()), exc.read())


def _lower(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers}


def start_s3_stack(tmp: Any, endpoint: str, url: str) -> Stack:
    env = {**aws_environment(endpoint), "RESULT_STORAGE_URL": url, "RESULT_INLINE_MAX_BYTES": str(INLINE_MAX_BYTES)}
    # The stack's processes inherit this process's environment: a developer's AWS profile must not leak in.
    with pytest.MonkeyPatch.context() as patch:
        for name in FOREIGN_AWS_VARIABLES:
            patch.delenv(name, raising=False)
        return start_stack(tmp, extra_env=env)


@pytest.fixture(scope="module")
def s3_stack(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str) -> Iterator[S3Stack]:
    bucket = f"stack-{new_id()[-12:]}"
    s3 = s3_client(s3_endpoint)
    s3.create_bucket(Bucket=bucket)
    stack = start_s3_stack(tmp_path_factory.mktemp("s3-stack"), s3_endpoint, f"s3://{bucket}/results")
    yield S3Stack(stack, bucket, s3)
    assert stop_stack(stack) == 0, stack.log_path.read_text()[-4000:]


@pytest.fixture(scope="module")
def unreachable_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_s3_stack(
        tmp_path_factory.mktemp("unreachable-stack"), f"http://127.0.0.1:{free_port()}", "s3://results/jobrelay"
    )
    yield stack
    assert stop_stack(stack) == 0, stack.log_path.read_text()[-4000:]


def submit(stack: Stack, body: dict[str, Any]) -> str:
    status, job = stack.request("POST", "/v1/jobs", body)
    assert status == 202, job
    return str(job["id"])


def test_a_result_over_the_inline_cap_is_served_from_s3(s3_stack: S3Stack) -> None:
    stack = s3_stack.stack
    # Given a job whose JSON result is larger than the row keeps
    message = "x" * (INLINE_MAX_BYTES * 5)
    job_id = submit(stack, {"task": "diagnostics.echo", "args": {"message": message}})
    # When a worker process has run it
    done = stack.wait_job(job_id, {"succeeded", "failed"}, timeout_s=30)
    # Then the row points at the result, which is an object in the bucket
    assert done["status"] == "succeeded" and done["result"] is None, done
    assert done["result_url"] == f"/v1/jobs/{job_id}/result"
    head = s3_stack.s3.head_object(Bucket=s3_stack.bucket, Key=f"results/{job_id}")
    assert head["ContentType"] == "application/json"
    # And the API serves its body from there
    response = fetch(stack, done["result_url"])
    assert (response.status, response.content_type) == (200, "application/json")
    assert json.loads(response.body) == message


@pytest.mark.parametrize("format", ["csv", "pdf"])
def test_a_report_file_is_streamed_to_s3_and_served(s3_stack: S3Stack, format: str) -> None:
    stack = s3_stack.stack
    # A succeeded job for the report to count, whatever ran on this stack before.
    echo = submit(stack, {"task": "diagnostics.echo", "args": {"message": "counted"}})
    assert stack.wait_job(echo, {"succeeded", "failed"}, timeout_s=30)["status"] == "succeeded"
    job_id = submit(stack, {"task": "reports.generate", "args": {"report": "jobs_by_status", "format": format}})
    done = stack.wait_job(job_id, {"succeeded", "failed"}, timeout_s=30)
    assert done["status"] == "succeeded", done

    response = fetch(stack, f"/v1/jobs/{job_id}/result")

    assert response.status == 200
    if format == "csv":
        assert response.content_type == "text/csv"
        rows = list(csv.reader(io.StringIO(response.body.decode())))
        assert rows[0] == ["status", "jobs"] and "succeeded" in [row[0] for row in rows[1:]]
    else:
        assert response.content_type == "application/pdf"
        assert response.body.startswith(b"%PDF-") and response.body.rstrip().endswith(b"%%EOF")


def test_an_export_is_streamed_to_s3_and_served(s3_stack: S3Stack) -> None:
    stack = s3_stack.stack
    job_id = submit(stack, {"task": "exports.run", "args": {"format": "jsonl", "task": "diagnostics.echo"}})
    done = stack.wait_job(job_id, {"succeeded", "failed"}, timeout_s=30)
    assert done["status"] == "succeeded", done

    response = fetch(stack, f"/v1/jobs/{job_id}/result")

    assert (response.status, response.content_type) == (200, "application/x-ndjson")
    lines = [json.loads(line) for line in response.body.splitlines()]
    assert lines and {line["task"] for line in lines} == {"diagnostics.echo"}


def test_a_result_object_removed_from_the_bucket_is_a_404(s3_stack: S3Stack) -> None:
    stack = s3_stack.stack
    job_id = submit(stack, {"task": "diagnostics.echo", "args": {"message": "y" * (INLINE_MAX_BYTES * 2)}})
    assert stack.wait_job(job_id, {"succeeded", "failed"}, timeout_s=30)["status"] == "succeeded"
    # When the object goes (a bucket lifecycle rule, an operator)
    s3_stack.s3.delete_object(Bucket=s3_stack.bucket, Key=f"results/{job_id}")
    # Then the API says it is gone, as for a pruned file
    response = fetch(stack, f"/v1/jobs/{job_id}/result")
    assert (response.status, response.content_type) == (404, "application/problem+json")
    assert "is gone" in json.loads(response.body)["detail"]


@pytest.mark.parametrize(
    "body",
    [
        {"task": "diagnostics.echo", "args": {"message": "z" * (INLINE_MAX_BYTES * 2)}},
        {"task": "reports.generate", "args": {"report": "jobs_by_status", "format": "pdf"}},
    ],
    ids=["large-result", "report-file"],
)
def test_an_unreachable_store_fails_the_attempt(unreachable_stack: Stack, body: dict[str, Any]) -> None:
    # Given a job whose result must go to S3, with no retry left after its first attempt
    job_id = submit(unreachable_stack, {**body, "max_retries": 0})
    # Then it ends failed, naming result storage, rather than staying running
    done = unreachable_stack.wait_job(job_id, {"succeeded", "failed"}, timeout_s=30)
    assert done["status"] == "failed" and done["attempts"] == 1, done
    assert done["error"]["type"] == "Unavailable" and "result storage" in done["error"]["message"]


def test_an_unreachable_store_retries_the_attempt(unreachable_stack: Stack) -> None:
    job_id = submit(
        unreachable_stack,
        {"task": "diagnostics.echo", "args": {"message": "w" * (INLINE_MAX_BYTES * 2)}, "max_retries": 5},
    )
    retrying = unreachable_stack.wait_job(job_id, {"retrying", "failed", "succeeded"}, timeout_s=30)
    assert retrying["status"] == "retrying" and retrying["error"]["type"] == "Unavailable", retrying


def test_an_unreachable_store_is_a_503_for_the_result(unreachable_stack: Stack) -> None:
    # Given a job that succeeded with its result in S3 (written into the stack's own SQLite job store)
    engine = create_store_engine(f"sqlite:///{unreachable_stack.data_dir / 'jobrelay.db'}")
    job_id = new_id()
    JobStore(engine).insert([make_job(id=job_id, status=JobStatus.SUCCEEDED, result_url=f"/v1/jobs/{job_id}/result")])
    engine.dispose()
    # When a client asks for the result while the S3 endpoint does not answer
    response = fetch(unreachable_stack, f"/v1/jobs/{job_id}/result")
    # Then it is told to come back later, not that the server broke, and nothing about the endpoint
    assert (response.status, response.content_type) == (503, "application/problem+json")
    assert response.headers.get("retry-after") == "1"
    problem = json.loads(response.body)
    assert problem["title"] == "Service unavailable" and "result storage" in problem["detail"]
    assert "127.0.0.1" not in problem["detail"]
