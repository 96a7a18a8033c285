"""Unique jobs and debounce on the real processes `jobrelay up` starts: a debounced burst runs its last
submission only (the replaced ones' messages reach a worker and are skipped), and a unique job is returned
while it runs, then free again once it has finished."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Stack, start_stack, stop_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    started = start_stack(tmp_path_factory.mktemp("unique"))
    try:
        yield started
    finally:
        assert stop_stack(started) == 0, started.log_path.read_text()[-4000:]


def test_a_debounced_burst_runs_only_its_last_submission(stack: Stack) -> None:
    # Given a burst of five submissions of one job, each waiting 1 s
    body = {"task": "diagnostics.echo", "args": {"message": "debounced"}, "debounce_s": 1}
    burst = [stack.request("POST", "/v1/jobs", body) for _ in range(5)]
    assert [status for status, _ in burst] == [202] * 5
    # Then the last runs, and the earlier ones were cancelled without ever starting
    last = stack.wait_job(burst[-1][1]["id"], {"succeeded", "failed"}, timeout_s=30)
    assert last["status"] == "succeeded" and last["result"] == "debounced"
    for _, job in burst[:-1]:
        status, replaced = stack.request("GET", f"/v1/jobs/{job['id']}")
        assert status == 200 and replaced["status"] == "cancelled"
        assert replaced["attempts"] == 0 and replaced["started_at"] is None
        assert replaced["error"]["type"] == "Debounced"


def test_a_unique_job_is_returned_while_it_runs_and_free_once_done(stack: Stack) -> None:
    body = {"task": "diagnostics.sleep", "args": {"seconds": 1.5}, "unique_for_s": 60}
    status, first = stack.request("POST", "/v1/jobs", body)
    assert status == 202
    stack.wait_job(first["id"], {"running"}, timeout_s=30)
    status, again = stack.request("POST", "/v1/jobs", body)
    assert status == 200 and again["id"] == first["id"]
    assert stack.wait_job(first["id"], {"succeeded", "failed"}, timeout_s=30)["status"] == "succeeded"
    status, after = stack.request("POST", "/v1/jobs", body)
    assert status == 202 and after["id"] != first["id"]
