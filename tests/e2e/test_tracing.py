"""One OpenTelemetry trace per job, on the real processes `jobrelay up` starts, exporting to a loopback receiver.

The receiver (``otlp_receiver.py``) decodes the OTLP/HTTP protobuf the API, the scheduler and the
workers send; the tests read the span trees: one trace id from the request to the finish, the
parent of every span, the messaging attributes, a retry's link, a workflow's steps, a schedule's
fire; and the trace id in the job's JSON and in the log lines.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import Stack, start_stack, stop_stack
from tests.e2e.otlp_receiver import Receiver, Span

SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5  # OTLP's SpanKind numbers


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[Stack]:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_TRACES_SAMPLER": "always_on",
        # NOTE: the batch processor's default delay is 5 s; the tests wait for the spans instead.
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "WEBHOOK_SIGNING_SECRET": "tracing-test-secret",
        # isolation="process" tasks: their child process's spans join the job's trace too.
        "TASK_MODULES": "tests.services.worker.isolated_tasks",
        # A success is a DEBUG line (INFO has a summary per task every 10 s); its trace ids are asserted below.
        "LOG_LEVEL": "DEBUG",
    }
    stack = start_stack(tmp_path_factory.mktemp("traced"), env)
    try:
        yield stack
    finally:
        code = stop_stack(stack)
        assert code == 0, stack.log_path.read_text()[-4000:]


def submit(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    status, job = stack.request("POST", "/v1/jobs", body)
    assert status == 202, job
    return job


def one(spans: list[Span], name: str, **attributes: Any) -> Span:
    found = [
        span
        for span in spans
        if span.name == name and all(span.attributes.get(key) == value for key, value in attributes.items())
    ]
    assert len(found) == 1, (name, attributes, [(span.name, span.attributes) for span in spans])
    return found[0]


def children(spans: list[Span], parent: Span) -> dict[str, Span]:
    return {span.name: span for span in spans if span.parent_id == parent.span_id}


def worker_tree(spans: list[Span], job_id: str, attempt: int = 1) -> Span:
    """The consumer span of ``job_id``'s attempt, after checking its children: claim, run, result, finish."""
    process = one(spans, "process default", **{"messaging.message.id": job_id, "jobrelay.attempt": attempt})
    assert process.kind == CONSUMER and process.service == "jobrelay-worker"
    assert process.attributes["messaging.system"] == "redis"
    assert process.attributes["messaging.operation.name"] == "process"
    assert process.attributes["messaging.destination.name"] == "default"
    below = children(spans, process)
    assert {"claim", "finish"} <= set(below), below
    assert any(name.startswith("run ") for name in below), below
    return process


def test_a_job_is_one_trace_from_the_request_to_its_finish(traced: Stack, receiver: Receiver) -> None:
    # Given a job submitted to the traced stack
    job = submit(traced, {"task": "diagnostics.echo", "args": {"message": "secret-argument-value"}})
    done = traced.wait_job(job["id"], {"succeeded"})
    # Then its JSON names its trace
    trace_id = done["trace_id"]
    assert trace_id and len(trace_id) == 32 and job["trace_id"] == trace_id

    def complete() -> list[Span]:
        spans = receiver.trace(trace_id)
        worker_tree(spans, job["id"])
        one(spans, "store commit")
        one(spans, "publish default")
        one(spans, "POST /v1/jobs")
        return spans

    spans = receiver.wait_for(complete)
    # The request's server span is the root, the commit and the publish its children
    request = one(spans, "POST /v1/jobs")
    assert request.kind == SERVER and request.parent_id == "" and request.service == "jobrelay-api"
    assert request.attributes["http.route"] == "/v1/jobs" and request.attributes["http.response.status_code"] == 202
    assert one(spans, "store commit").parent_id == request.span_id
    publish = one(spans, "publish default")
    assert publish.kind == PRODUCER and publish.parent_id == request.span_id
    assert publish.attributes["messaging.operation.name"] == "publish"
    assert publish.attributes["messaging.message.id"] == job["id"]
    assert publish.attributes["jobrelay.task"] == "diagnostics.echo"
    # And the worker's consumer span is the publish's child, with the claim, the run and the finish under it
    process = worker_tree(spans, job["id"])
    assert process.parent_id == publish.span_id
    assert children(spans, process)["run diagnostics.echo"].attributes["jobrelay.attempt"] == 1
    # No argument value is in any span
    assert "secret-argument-value" not in json.dumps([span.attributes for span in spans])
    # And the worker's log lines of the job carry the trace id and a span id of it
    span_ids = {span.span_id for span in spans}

    def logged() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in traced.log_path.read_text().splitlines() if line.startswith("{")]
        return [line for line in lines if line.get("job_id") == job["id"] and line.get("service") == "worker"]

    lines = receiver.wait_for(logged)
    assert all(line.get("trace_id") == trace_id for line in lines), lines
    assert all(line.get("span_id") in span_ids for line in lines), lines


def test_a_retry_is_a_new_span_in_the_same_trace_linked_to_the_attempt_before(
    traced: Stack, receiver: Receiver
) -> None:
    # Given a job that fails its first attempt and succeeds its second
    job = submit(traced, {"task": "diagnostics.fail", "args": {"succeed_on_attempt": 2}})
    done = traced.wait_job(job["id"], {"succeeded"}, timeout_s=20)
    assert done["attempts"] == 2

    def both() -> tuple[Span, Span]:
        spans = receiver.trace(done["trace_id"])
        return worker_tree(spans, job["id"], 1), worker_tree(spans, job["id"], 2)

    first, second = receiver.wait_for(both)
    # Then the first attempt's span records the task's error, and the second links to it
    assert first.status_code == 2 and first.attributes["error.type"] == "DiagnosticFailure"
    assert "exception" in first.events
    assert (done["trace_id"], first.span_id) in second.links
    assert second.status_code != 2


def test_a_workflows_steps_join_the_trace_of_its_request(traced: Stack, receiver: Receiver) -> None:
    # Given a chain of two steps (the second released by the worker when the first succeeds)
    step = {"task": "diagnostics.echo", "args": {"message": "step"}}
    status, workflow = traced.request("POST", "/v1/workflows", {"type": "chain", "steps": [step, step]})
    assert status == 202, workflow
    first_id, second_id = workflow["jobs"]
    second = traced.wait_job(second_id, {"succeeded"}, timeout_s=20)
    first = traced.wait_job(first_id, {"succeeded"})
    # Then both steps are in the trace of the request that made the workflow
    assert first["trace_id"] == second["trace_id"]

    def steps() -> list[Span]:
        spans = receiver.trace(second["trace_id"])
        for job_id in (first_id, second_id):
            worker_tree(spans, job_id)
            one(spans, "publish default", **{"messaging.message.id": job_id})
        one(spans, "POST /v1/workflows")
        return spans

    spans = receiver.wait_for(steps)
    request = one(spans, "POST /v1/workflows")
    assert request.parent_id == ""
    for job_id in (first_id, second_id):
        publish = one(spans, "publish default", **{"messaging.message.id": job_id})
        assert publish.parent_id == request.span_id
        assert publish.attributes["jobrelay.workflow_id"] == workflow["id"]
        process = worker_tree(spans, job_id)
        assert process.parent_id == publish.span_id
        assert process.attributes["jobrelay.workflow_id"] == workflow["id"]


def test_a_scheduled_fire_starts_a_trace_of_its_own(traced: Stack, receiver: Receiver) -> None:
    # Given a schedule firing every second
    status, schedule = traced.request(
        "POST",
        "/v1/schedules",
        {"id": "traced-tick", "task": "diagnostics.echo", "args": {"message": "tick"}, "interval_s": 1},
    )
    assert status == 201, schedule

    def fired() -> tuple[Span, list[Span]]:
        fires = [span for span in list(receiver.spans) if span.name == "fire traced-tick"]
        for fire in fires:
            spans = receiver.trace(fire.trace_id)
            names = [span.name for span in spans]
            if "process default" in names and "publish default" in names:
                return fire, spans
        raise AssertionError(f"{len(fires)} fire(s), none with its job's spans yet")

    try:
        fire, spans = receiver.wait_for(fired, timeout_s=30)
    finally:
        traced.request("DELETE", "/v1/schedules/traced-tick")
    # Then the fire is a root span of the scheduler's, naming its schedule, and its job runs in its trace
    assert fire.parent_id == "" and fire.service == "jobrelay-scheduler"
    assert fire.attributes["jobrelay.schedule_id"] == "traced-tick"
    publish = one(spans, "publish default")
    assert publish.parent_id == fire.span_id
    process = one(spans, "process default")
    assert process.parent_id == publish.span_id
    job_id = process.attributes["messaging.message.id"]
    status, job = traced.request("GET", f"/v1/jobs/{job_id}")
    assert status == 200 and job["schedule_id"] == "traced-tick" and job["trace_id"] == fire.trace_id


def test_a_tasks_outbound_http_call_is_a_span_under_its_run(traced: Stack, receiver: Receiver) -> None:
    # Given a webhook delivered to the receiver (urllib, instrumented when the package is installed)
    hook = receiver.endpoint + "/hook"
    job = submit(traced, {"task": "webhooks.deliver", "args": {"url": hook, "payload": {"token": "do-not-trace"}}})
    done = traced.wait_job(job["id"], {"succeeded"}, timeout_s=20)

    def call() -> tuple[Span, Span, list[Span]]:
        spans = receiver.trace(done["trace_id"])
        run = one(spans, "run webhooks.deliver")
        outbound = next(span for span in spans if span.kind == CLIENT and span.parent_id == run.span_id)
        return run, outbound, spans

    _run, outbound, spans = receiver.wait_for(call)
    # Then the call is the run's child, and the request it made carried its traceparent
    assert outbound.attributes.get("http.request.method", outbound.attributes.get("http.method")) == "POST"
    sent = [headers for headers in receiver.hooks if headers.get("x-jobrelay-delivery") == job["id"]]
    assert sent and sent[-1]["traceparent"].split("-")[1:3] == [done["trace_id"], outbound.span_id]
    assert "do-not-trace" not in json.dumps([span.attributes for span in spans])


def test_an_isolated_tasks_child_process_joins_the_trace(traced: Stack, receiver: Receiver) -> None:
    # Given a job whose task runs in a child process (isolation="process")
    job = submit(traced, {"task": "isolated.whoami", "args": {}})
    done = traced.wait_job(job["id"], {"succeeded"}, timeout_s=30)

    def child_span() -> tuple[Span, Span]:
        spans = receiver.trace(done["trace_id"])
        run = one(spans, "run isolated.whoami")
        return run, one(spans, "isolated run")

    run, child = receiver.wait_for(child_span)
    # Then the child's span, exported by the child itself, is the run span's child
    assert child.parent_id == run.span_id and child.attributes["jobrelay.task"] == "isolated.whoami"


def test_the_duration_histograms_carry_exemplars_of_sampled_traces(traced: Stack, receiver: Receiver) -> None:
    # Given a traced job, run and answered
    job = submit(traced, {"task": "diagnostics.echo", "args": {"message": "exemplar"}})
    traced.wait_job(job["id"], {"succeeded"})

    def exemplar_traces(url: str, metric: str) -> set[str]:
        request = urllib.request.Request(url, headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
            text = resp.read().decode()
        found = set(re.findall(rf'^{metric}_bucket{{[^}}]*}} \S+ # {{trace_id="([0-9a-f]{{32}})"}}', text, re.M))
        seen = {span.trace_id for span in list(receiver.spans)}
        return found & seen

    # Then the worker's job durations and the API's request durations (OpenMetrics) point at traces received
    assert receiver.wait_for(lambda: exemplar_traces(traced.worker_metrics_url, "jobrelay_job_duration_seconds"))
    api_metrics = traced.base_url + "/metrics"
    assert receiver.wait_for(lambda: exemplar_traces(api_metrics, "jobrelay_http_request_duration_seconds"))
    # And the classic text format, which has no exemplars, is still what a plain scrape gets
    with urllib.request.urlopen(api_metrics, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain") and b"trace_id" not in resp.read()
