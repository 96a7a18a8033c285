"""Pausing a queue on the real processes `jobrelay up` starts: jobs wait, other queues run, the pause
outlives a restart of every service, and a resume runs them."""

from __future__ import annotations

import time
from pathlib import Path

from tests.e2e.conftest import Stack, start_stack, stop_stack

ECHO = {"task": "diagnostics.echo", "args": {"message": "after the pause"}}


def queue_row(stack: Stack, name: str) -> dict[str, object]:
    status, listed = stack.request("GET", "/v1/queues")
    assert status == 200, listed
    [row] = [q for q in listed["items"] if q["name"] == name]
    return row


def test_a_paused_queue_keeps_its_jobs_through_a_restart_until_resumed(tmp_path: Path) -> None:
    stack = start_stack(tmp_path)
    try:
        # Given the default queue paused, and a job submitted to it
        status, paused = stack.request("POST", "/v1/queues/default/pause")
        assert status == 200 and paused["paused"] is True
        status, job = stack.request("POST", "/v1/jobs", ECHO)
        assert status == 202
        # Then another queue's job runs meanwhile, and the paused one stays queued for seconds
        _, other = stack.request("POST", "/v1/jobs", {**ECHO, "queue": "emails"})
        assert stack.wait_job(other["id"], {"succeeded", "failed"}, timeout_s=20)["status"] == "succeeded"
        time.sleep(2)
        assert stack.request("GET", f"/v1/jobs/{job['id']}")[1]["status"] == "queued"
        assert queue_row(stack, "default")["paused"] is True and queue_row(stack, "default")["depth"] == 1
    finally:
        assert stop_stack(stack) == 0, stack.log_path.read_text()[-4000:]
    # When every service restarts (API, worker, scheduler)
    stack = start_stack(tmp_path)
    try:
        # Then the queue is still paused and the job still waits
        assert queue_row(stack, "default")["paused"] is True
        time.sleep(2)
        assert stack.request("GET", f"/v1/jobs/{job['id']}")[1]["status"] == "queued"
        # When it is resumed, the job runs at once
        status, resumed = stack.request("POST", "/v1/queues/default/resume")
        assert status == 200 and resumed["paused"] is False
        done = stack.wait_job(job["id"], {"succeeded", "failed"}, timeout_s=10)
        assert done["status"] == "succeeded" and done["result"] == "after the pause"
        assert queue_row(stack, "default")["paused"] is False
    finally:
        assert stop_stack(stack) == 0, stack.log_path.read_text()[-4000:]
