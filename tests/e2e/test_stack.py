"""A new user's first minutes, on the real processes `jobrelay up` starts."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.conftest import Stack, start_stack, stop_stack


def test_echo_succeeds_within_a_second(stack: Stack) -> None:
    started = time.monotonic()
    status, job = stack.request("POST", "/v1/jobs", {"task": "diagnostics.echo", "args": {"message": "hi"}})
    assert status == 202 and job["status"] == "queued"
    done = stack.wait_job(job["id"], {"succeeded", "failed"}, timeout_s=1.0)
    assert done["status"] == "succeeded" and done["result"] == "hi"
    assert time.monotonic() - started < 1.0


def test_invalid_args_answer_422_and_store_nothing(stack: Stack) -> None:
    _, before = stack.request("GET", "/v1/jobs?limit=500")
    status, problem = stack.request("POST", "/v1/jobs", {"task": "diagnostics.sleep", "args": {"seconds": "x"}})
    assert status == 422 and problem["errors"][0]["path"] == "/args/seconds"
    _, after = stack.request("GET", "/v1/jobs?limit=500")
    assert [j["id"] for j in after["items"]] == [j["id"] for j in before["items"]]


def test_a_job_reads_queued_running_then_succeeded(stack: Stack) -> None:
    _, job = stack.request("POST", "/v1/jobs", {"task": "diagnostics.sleep", "args": {"seconds": 1}})
    running = stack.wait_job(job["id"], {"running"})
    assert running["attempts"] == 1 and running["started_at"]
    with_progress = stack.wait_job(job["id"], {"succeeded"}, timeout_s=5)
    assert with_progress["progress"]["current"] == with_progress["progress"]["total"]


def test_failure_reads_failed_with_error_type_and_message(stack: Stack) -> None:
    _, job = stack.request("POST", "/v1/jobs", {"task": "diagnostics.fail", "args": {}, "max_retries": 0})
    done = stack.wait_job(job["id"], {"failed"})
    assert done["error"]["type"] == "DiagnosticFailure" and "failing on purpose" in done["error"]["message"]


def test_kill_9_of_a_worker_process_reruns_its_job(stack: Stack) -> None:
    # Given a job running in one of the worker processes
    # (with a retry left: the attempt a process dies under counts, as any failed attempt does)
    _, job = stack.request(
        "POST", "/v1/jobs", {"task": "diagnostics.sleep", "args": {"seconds": 1.5}, "max_retries": 1}
    )
    stack.wait_job(job["id"], {"running"})
    victims = stack.pids_of("services.worker.process")
    assert len(victims) == 2
    # When every worker process is killed outright
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    # Then the job runs again (after its backoff) on a replacement process and succeeds, once
    done = stack.wait_job(job["id"], {"succeeded", "failed"}, timeout_s=20)
    assert done["status"] == "succeeded" and done["attempts"] == 2
    assert time.monotonic() - killed_at < 20
    replacements = stack.pids_of("services.worker.process")
    assert len(replacements) == 2 and not set(replacements) & set(victims)


def test_worker_metrics_are_served(stack: Stack) -> None:
    series = 'jobrelay_jobs_succeeded_total{queue="default",task="diagnostics.echo"}'

    def value() -> float:
        text = urllib.request.urlopen(stack.worker_metrics_url, timeout=5).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series + " "))

    before = value()
    _, job = stack.request("POST", "/v1/jobs", {"task": "diagnostics.echo", "args": {"message": "m"}})
    stack.wait_job(job["id"], {"succeeded"})
    deadline = time.monotonic() + 5
    while value() < before + 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert value() == before + 1


def test_sigterm_stops_every_process(tmp_path: Path) -> None:
    stack = start_stack(tmp_path)
    pids = stack.pids_of("services.cli") + stack.pids_of("services.worker.process") + stack.pids_of("gunicorn")
    assert stop_stack(stack) == 0
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    assert "jobrelay up: stopped" in stack.log_path.read_text()


def test_request_id_follows_the_job_into_the_worker_logs(stack: Stack) -> None:
    import json as jsonlib

    # Given a request with a request id of the client's
    req = urllib.request.Request(
        stack.base_url + "/v1/jobs",
        # NOTE: its first attempt fails: a success is a DEBUG line, a retried attempt a WARNING one.
        data=b'{"task": "diagnostics.fail", "args": {"succeed_on_attempt": 2}}',
        headers={
            "Authorization": f"Bearer {stack.token}",
            "Content-Type": "application/json",
            "X-Request-ID": "trace-me-42",
        },
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["X-Request-ID"] == "trace-me-42"
        job_id = jsonlib.loads(resp.read())["id"]
    stack.wait_job(job_id, {"succeeded"})
    # Then the worker's JSON log line for the job carries it, with the job's context
    deadline = time.monotonic() + 5
    while True:
        lines = [jsonlib.loads(line) for line in stack.log_path.read_text().splitlines() if line.startswith("{")]
        mine = [line for line in lines if line.get("job_id") == job_id and line.get("service") == "worker"]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert mine, "no worker log line for the job"
    line = next((line for line in mine if "attempt 1 failed, retrying" in line["message"]), mine[0])
    assert line["request_id"] == "trace-me-42" and line["task"] == "diagnostics.fail"
    assert line["queue"] == "default" and line["attempt"] == 1 and line["level"] == "warning"
    # Tracing is off by default (no OTEL endpoint): no trace id on the lines nor on the job
    assert not [line for line in mine if "trace_id" in line]
    assert stack.request("GET", f"/v1/jobs/{job_id}")[1]["trace_id"] is None
    # The banner of `jobrelay up` prints the dev key on purpose; no service log line may.
    assert not [
        line for line in stack.log_path.read_text().splitlines() if line.startswith("{") and stack.token in line
    ]


def test_a_chunked_body_is_read_whole(stack: Stack) -> None:
    # Given a job body sent with Transfer-Encoding: chunked (no Content-Length), in small pieces
    body = json.dumps({"task": "diagnostics.echo", "args": {"message": "chunked"}}).encode()
    pieces = iter([body[i : i + 7] for i in range(0, len(body), 7)])
    conn = http.client.HTTPConnection(urllib.parse.urlsplit(stack.base_url).netloc, timeout=10)
    headers = {"Authorization": f"Bearer {stack.token}", "Content-Type": "application/json"}
    conn.request("POST", "/v1/jobs", body=pieces, headers=headers, encode_chunked=True)
    resp = conn.getresponse()
    # Then the API reads the whole body and accepts the job
    assert resp.status == 202, resp.read()
    job = json.loads(resp.read())
    assert stack.wait_job(job["id"], {"succeeded"})["result"] == "chunked"
    conn.close()


@pytest.mark.parametrize("coding", ["", "gzip", "chunked, br"])
def test_a_transfer_coding_the_api_cannot_read_is_a_400(stack: Stack, coding: str) -> None:
    # Given a request whose Transfer-Encoding is empty or one gunicorn does not decode (it answers 501)
    host, port = urllib.parse.urlsplit(stack.base_url).netloc.split(":")
    request = (
        f"GET /v1/queues HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {stack.token}\r\n"
        f"Transfer-Encoding: {coding}\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request.encode())
        answer = sock.recv(4096).decode(errors="replace")
    # Then the answer is a client error in problem+json, not a server error
    head, _, body = answer.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 400") and "Content-Type: application/problem+json" in head, answer
    assert json.loads(body)["status"] == 400


def test_the_banner_lists_every_url_once_the_api_answers(stack: Stack) -> None:
    log = stack.log_path.read_text()
    banner = log[log.index("jobrelay is up") :]
    for url in (
        stack.base_url,
        f"{stack.base_url}/docs",
        f"{stack.base_url}/console/",
        f"{stack.base_url}/metrics",
        stack.worker_metrics_url,
    ):
        assert url in banner, url
    assert "scheduler metrics" in banner


def test_gunicorn_logs_in_the_same_json_lines(stack: Stack) -> None:
    lines = stack.log_path.read_text().splitlines()
    gunicorn = [json.loads(line) for line in lines if line.startswith("{") and '"gunicorn.error"' in line]
    assert any("Listening at" in line["message"] for line in gunicorn), lines[:40]
    assert all(line["service"] == "api" for line in gunicorn)
    # gunicorn's own text format starts with "[<date>] [<pid>] [INFO]"
    assert not [line for line in lines if line.startswith("[") and "] [INFO]" in line]
