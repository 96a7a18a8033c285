"""``S3Storage`` against a real S3-compatible server (moto's, on loopback): objects, failures, settings."""

from __future__ import annotations

import csv
from typing import Any

import pytest

from services.worker.tasks.reports import text_writer
from shared.errors import SettingsError, Unavailable
from shared.ids import new_id
from shared.redis_server import free_port
from shared.results import ResultStorage, build_result_storage
from shared.results.s3 import SPOOL_MAX_BYTES, S3Storage
from shared.settings import Settings
from tests.conftest import s3_client


@pytest.fixture
def s3(s3_endpoint: str) -> Any:
    return s3_client(s3_endpoint)


@pytest.fixture
def storage(s3_bucket: str) -> ResultStorage:
    return build_result_storage(f"s3://{s3_bucket}/results")


def keys(s3: Any, bucket: str) -> list[str]:
    return [entry["Key"] for entry in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_the_url_selects_s3_storage(storage: ResultStorage, s3_bucket: str) -> None:
    assert isinstance(storage, S3Storage)
    assert (storage.location.bucket, storage.location.prefix) == (s3_bucket, "results/")


def test_put_open_delete_round_trip(storage: ResultStorage, s3: Any, s3_bucket: str) -> None:
    job_id = new_id()

    reference = storage.put(job_id, b'{"rows":3}', "application/json")

    # The object is the prefix plus the job id, its content type the object's ContentType
    assert reference == job_id
    head = s3.head_object(Bucket=s3_bucket, Key=f"results/{job_id}")
    assert head["ContentType"] == "application/json"
    assert storage.open(reference) == (b'{"rows":3}', "application/json")

    storage.delete(reference)

    assert keys(s3, s3_bucket) == []
    with pytest.raises(FileNotFoundError):
        storage.open(reference)
    storage.delete(reference)  # already gone: nothing to do


@pytest.mark.parametrize(("suffix", "prefix"), [("", ""), ("/", ""), ("/a/b", "a/b/"), ("/a/b/", "a/b/")])
def test_the_key_is_the_prefix_plus_the_job_id(s3_bucket: str, s3: Any, suffix: str, prefix: str) -> None:
    job_id = new_id()
    build_result_storage(f"s3://{s3_bucket}{suffix}").put(job_id, b"x", "text/plain")
    assert keys(s3, s3_bucket) == [f"{prefix}{job_id}"]


def test_open_of_an_absent_object_raises_file_not_found(storage: ResultStorage) -> None:
    with pytest.raises(FileNotFoundError):
        storage.open(new_id())


def test_writer_streams_a_body_larger_than_its_memory_buffer(storage: ResultStorage) -> None:
    # 9 MiB in 64 KiB chunks: past the spool (it goes to disk) and past the 8 MiB multipart threshold.
    chunk = bytes(range(256)) * 256
    job_id = new_id()
    with storage.writer(job_id, "application/octet-stream") as handle:
        for _ in range(9 * 16):
            handle.write(chunk)

    body, content_type = storage.open(job_id)
    assert len(body) == 9 << 20 > SPOOL_MAX_BYTES and body == chunk * 9 * 16
    assert content_type == "application/octet-stream"


def test_writer_takes_the_text_wrapper_the_tasks_use(storage: ResultStorage) -> None:
    job_id = new_id()
    with storage.writer(job_id, "text/csv") as handle, text_writer(handle) as out:
        csv.writer(out).writerows([["status", "jobs"], ["succeeded", "3"]])
    assert storage.open(job_id) == (b"status,jobs\r\nsucceeded,3\r\n", "text/csv")


def test_a_writer_block_that_raises_leaves_nothing(storage: ResultStorage, s3: Any, s3_bucket: str) -> None:
    job_id = new_id()

    with pytest.raises(RuntimeError, match="task broke"), storage.writer(job_id, "text/csv") as handle:
        handle.write(b"half,a,row")
        raise RuntimeError("task broke")

    assert keys(s3, s3_bucket) == []
    with pytest.raises(FileNotFoundError):
        storage.open(job_id)


def test_a_failed_rewrite_keeps_the_previous_body(storage: ResultStorage) -> None:
    # Given the body of an earlier attempt
    job_id = new_id()
    storage.put(job_id, b"attempt 1", "text/plain")
    # When the next attempt's block fails halfway
    with pytest.raises(RuntimeError), storage.writer(job_id, "text/plain") as handle:
        handle.write(b"attempt 2, half")
        raise RuntimeError
    # Then the stored body is still the whole earlier one
    assert storage.open(job_id) == (b"attempt 1", "text/plain")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3://", "needs a bucket: s3://BUCKET[/prefix]"),
        ("s3:///results", "needs a bucket"),
        ("s3://a/results", "bucket name must be 3 to 255"),
        ("s3://bad bucket/results", "bucket name must be"),
        ("s3://key:secret@bucket/results", "takes no credentials; set AWS_ACCESS_KEY_ID"),
        ("s3://bucket?endpoint=http://127.0.0.1:9000&region=eu-west-1", "takes no query parameters"),
        ("s3://minio.internal:9000/bucket", "not a host and port; set AWS_ENDPOINT_URL_S3"),
        ("s3://bucket//results", "must not have empty segments"),
        ("gs://bucket/results", "use file:// or s3://"),
    ],
)
def test_a_bad_url_is_refused_naming_what_is_wrong(s3_env: dict[str, str], url: str, message: str) -> None:
    with pytest.raises(SettingsError) as built:
        build_result_storage(url)
    assert str(built.value).startswith("RESULT_STORAGE_URL: ") and message in str(built.value)
    # The same check stops every service at start, before it builds anything
    with pytest.raises(SettingsError) as parsed:
        Settings.from_env({"RESULT_STORAGE_URL": url})
    assert "RESULT_STORAGE_URL: " in str(parsed.value)
    assert "secret" not in str(built.value) + str(parsed.value)


def test_no_credentials_anywhere_is_refused_at_start(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(SettingsError, match="s3:// needs AWS credentials: set AWS_ACCESS_KEY_ID"):
        build_result_storage("s3://bucket/results")


def test_half_a_key_pair_is_refused_at_start(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(SettingsError, match="cannot build the S3 client"):
        build_result_storage("s3://bucket/results")


def test_a_malformed_endpoint_is_refused_at_start(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "minio.internal:9000")
    with pytest.raises(SettingsError, match=r"Invalid endpoint.*check AWS_ENDPOINT_URL_S3"):
        build_result_storage("s3://bucket/results")


def test_a_missing_bucket_is_unavailable_not_a_missing_result(s3_env: dict[str, str]) -> None:
    storage = build_result_storage(f"s3://never-created-{new_id()[-12:]}/results")
    with pytest.raises(Unavailable, match="NoSuchBucket"):
        storage.put(new_id(), b"x", "text/plain")
    with pytest.raises(Unavailable, match="NoSuchBucket"):
        storage.open(new_id())


def test_an_unreachable_endpoint_is_unavailable(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an endpoint where nothing listens (one try per call keeps the test short; the retries are botocore's)
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", dead)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    storage = build_result_storage("s3://bucket/results")
    job_id = new_id()
    # Then every call raises Unavailable (the worker fails the attempt, the API answers 503), never revealing the
    # endpoint to API clients
    calls = [
        lambda: storage.put(job_id, b"x", "text/plain"),
        lambda: storage.open(job_id),
        lambda: storage.delete(job_id),
    ]
    for call in calls:
        with pytest.raises(Unavailable, match="EndpointConnectionError") as raised:
            call()
        assert dead not in raised.value.detail and "bucket 'bucket'" in raised.value.detail
    with pytest.raises(Unavailable), storage.writer(job_id, "text/csv") as handle:
        handle.write(b"a,b\r\n")
