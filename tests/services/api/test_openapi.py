"""``/openapi.json``: a valid OpenAPI 3.1 document that describes exactly what the app serves and accepts."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import falcon
import pytest
from falcon import testing
from jsonschema import Draft202012Validator, FormatChecker, ValidationError, validators
from openapi_spec_validator import validate
from openapi_spec_validator.validation import OpenAPIV31SpecValidator

from services.api.openapi import JOB_OPTIONS
from services.api.resources.openapi import OPERATIONS
from shared.broker.queues import QueueStats
from shared.job import Job, JobStatus, utcnow
from shared.schedules.definition import READ_ONLY_FIELDS
from shared.store.schedules import DEFINITION_FIELDS
from shared.store.tasks import TaskRegistry
from shared.store.workflows import Workflow
from shared.submission.validation import JOB_FIELDS, MAX_DELAY_S, MAX_TIME_LIMIT_S
from tests.services.api.conftest import ADMIN

Doc = dict[str, Any]
ECHO = {"task": "diagnostics.echo", "args": {"message": "hi"}}
SLEEP = {"task": "diagnostics.sleep", "args": {"seconds": 0}}


@pytest.fixture
def doc(client: testing.TestClient) -> Doc:
    # NOTE: a client without the default token: the document is public.
    resp = testing.TestClient(client.app).simulate_get("/openapi.json")
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    return resp.json


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    """``pattern`` as JSON Schema means it (ECMA-262): a final ``$`` ends the string, not a final newline too."""
    python = pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern
    if isinstance(instance, str) and not re.search(python, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


EcmaValidator = validators.extend(Draft202012Validator, {"pattern": _ecma_pattern})


def schema_validator(doc: Doc, name: str) -> Any:
    """A validator for one component schema, its ``$ref``s resolved inside the document."""
    return EcmaValidator(
        {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}, format_checker=FormatChecker()
    )


def routes(app: falcon.App) -> Iterator[tuple[str | None, str, Any]]:
    """(URI template, method, resource) for every responder of the API the app's router holds.

    The console's HTML pages (``/console``, services/api/console/) and the Swagger UI page (``/docs``)
    are not part of the API's contract.
    """
    nodes = list(app._router._roots)
    while nodes:
        node = nodes.pop()
        nodes.extend(node.children)
        if (
            node.resource is None
            or getattr(node.resource, "console_page", False)
            or getattr(node.resource, "docs_page", False)
        ):
            continue
        for method in falcon.constants.COMBINED_METHODS:
            if hasattr(node.resource, f"on_{method.lower()}"):
                yield node.uri_template, method.lower(), node.resource


def test_the_document_is_valid_openapi_3_1(doc: Doc) -> None:
    validate(doc, cls=OpenAPIV31SpecValidator)
    assert doc["openapi"].startswith("3.1.") and "servers" not in doc
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "A key of API_KEYS.",
    }


def test_every_route_of_the_app_is_documented_with_its_scope(client: testing.TestClient, doc: Doc) -> None:
    served = {}
    for template, method, resource in routes(client.app):
        scope = None if getattr(resource, "public", False) else resource.scopes[method.upper()]
        served[(template, method)] = scope
    documented = {}
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            [requirement] = operation["security"] or [{"bearer": [None]}]
            documented[(path, method)] = requirement["bearer"][0]
    assert documented == served
    assert len(OPERATIONS) == len(served)


def test_public_endpoints_need_no_token_and_the_rest_answer_401_and_403(doc: Doc) -> None:
    public = {path for path, item in doc["paths"].items() if item.get("get", {}).get("security") == []}
    assert public == {"/healthz", "/readyz", "/metrics", "/openapi.json"}
    for path, item in doc["paths"].items():
        for operation in item.values():
            if operation["security"]:
                assert {"401", "403"} <= set(operation["responses"]), path


def test_each_registered_task_is_a_variant_of_the_job_request(doc: Doc, registry: TaskRegistry) -> None:
    schemas = doc["components"]["schemas"]
    variants = [item["$ref"].rsplit("/", 1)[1] for item in schemas["JobRequest"]["oneOf"]]
    assert variants == [f"JobRequest.{name}" for name in sorted(registry.all())]
    for name, spec in registry.all().items():
        variant = schemas[f"JobRequest.{name}"]
        assert variant["properties"]["task"]["const"] == name
        assert variant["properties"]["args"] == spec.args_schema
        assert variant["additionalProperties"] is False
        assert set(variant["properties"]) == JOB_FIELDS


def test_a_newly_registered_task_appears_in_the_document(client: testing.TestClient, registry: TaskRegistry) -> None:
    # Given the document as served once
    public = testing.TestClient(client.app)
    before = public.simulate_get("/openapi.json").json["components"]["schemas"]
    echo = registry.get("diagnostics.echo")
    assert echo is not None and "JobRequest.reports.echo_twice" not in before
    # When a worker registers another task
    registry.register([replace(echo, name="reports.echo_twice")], registered_by="tests")
    # Then the next document has its variant
    after = public.simulate_get("/openapi.json").json["components"]["schemas"]
    assert after["JobRequest.reports.echo_twice"]["properties"]["task"]["const"] == "reports.echo_twice"


LONG_KEY = "k" * 200
#: An eta a month ahead: within the 365 days an eta may lie ahead, whenever the test runs.
SOON = (utcnow() + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%S")
JOB_REQUESTS: list[tuple[str, Any, bool]] = [
    ("minimal", ECHO, True),
    ("no args for a task with none required", {"task": "diagnostics.fail"}, True),
    ("every option at its upper bound", {**SLEEP, "queue": "reports", "delay_s": MAX_DELAY_S, "priority": 9,
     "max_retries": 100, "time_limit_s": MAX_TIME_LIMIT_S, "max_age_s": MAX_DELAY_S, "idempotency_key": LONG_KEY},
     True),
    ("every option at its lower bound", {**SLEEP, "delay_s": 0, "priority": 0, "max_retries": 0,
     "time_limit_s": 0.001, "max_age_s": 0.001, "idempotency_key": "k"}, True),
    ("options null", {**SLEEP, **dict.fromkeys(JOB_OPTIONS)}, True),
    ("eta with an offset", {**ECHO, "eta": f"{SOON}+02:00"}, True),
    ("eta with delay 0", {**ECHO, "eta": f"{SOON}Z", "delay_s": 0}, True),
    ("eta and a delay", {**ECHO, "eta": f"{SOON}Z", "delay_s": 5}, False),
    ("eta without an offset", {**ECHO, "eta": SOON}, False),
    ("eta not a date", {**ECHO, "eta": "tomorrow"}, False),
    ("priority 10", {**ECHO, "priority": 10}, False),
    ("priority -1", {**ECHO, "priority": -1}, False),
    ("priority true", {**ECHO, "priority": True}, False),
    ("priority 1.5", {**ECHO, "priority": 1.5}, False),
    ("max_retries 101", {**ECHO, "max_retries": 101}, False),
    ("delay_s negative", {**ECHO, "delay_s": -0.5}, False),
    ("delay_s over a year", {**ECHO, "delay_s": MAX_DELAY_S + 1}, False),
    ("time_limit_s 0", {**ECHO, "time_limit_s": 0}, False),
    ("time_limit_s over a week", {**ECHO, "time_limit_s": MAX_TIME_LIMIT_S + 1}, False),
    ("max_age_s 0", {**ECHO, "max_age_s": 0}, False),
    ("empty idempotency key", {**ECHO, "idempotency_key": ""}, False),
    ("idempotency key of 201", {**ECHO, "idempotency_key": LONG_KEY + "k"}, False),
    ("queue with capitals", {**ECHO, "queue": "Default"}, False),
    ("queue with a trailing newline", {**ECHO, "queue": "default\n"}, False),
    ("queue no registered task uses", {**ECHO, "queue": "q-9_x"}, False),
    ("unknown field", {**ECHO, "colour": "red"}, False),
    ("unknown task", {"task": "nope.never", "args": {}}, False),
    ("no task", {"args": {}}, False),
    ("required arg missing", {"task": "diagnostics.sleep", "args": {}}, False),
    ("args missing for a task that needs some", {"task": "diagnostics.echo"}, False),
    ("arg of the wrong type", {"task": "diagnostics.sleep", "args": {"seconds": "x"}}, False),
    ("arg out of range", {"task": "diagnostics.sleep", "args": {"seconds": 3601}}, False),
    ("unknown arg", {"task": "diagnostics.echo", "args": {"message": "m", "loud": True}}, False),
    ("args not an object", {"task": "diagnostics.fail", "args": []}, False),
    ("not an object", [ECHO], False),
]  # fmt: skip


@pytest.mark.parametrize(("body", "valid"), [(b, v) for _, b, v in JOB_REQUESTS], ids=[n for n, _, _ in JOB_REQUESTS])
def test_the_job_request_schema_accepts_what_the_api_accepts(
    client: testing.TestClient, doc: Doc, body: Any, valid: bool
) -> None:
    assert schema_validator(doc, "JobRequest").is_valid(body) is valid
    resp = client.simulate_post("/v1/jobs", json=body)
    assert resp.status_code == (202 if valid else 422), resp.text
    if valid:
        assert not list(schema_validator(doc, "Job").iter_errors(resp.json))


WORKFLOWS: list[tuple[str, dict[str, Any], bool]] = [
    ("chain", {"type": "chain", "steps": [ECHO, SLEEP]}, True),
    ("group with a null callback", {"type": "group", "steps": [ECHO], "callback": None}, True),
    ("chord", {"type": "chord", "steps": [ECHO, ECHO], "callback": {"task": "diagnostics.fail"}}, True),
    ("chord without callback", {"type": "chord", "steps": [ECHO]}, False),
    ("group with a callback", {"type": "group", "steps": [ECHO], "callback": ECHO}, False),
    ("no steps", {"type": "chain", "steps": []}, False),
    ("step with an idempotency key", {"type": "group", "steps": [{**ECHO, "idempotency_key": "k"}]}, False),
    ("unknown type", {"type": "pipeline", "steps": [ECHO]}, False),
    ("invalid step", {"type": "group", "steps": [ECHO, {"task": "diagnostics.sleep"}]}, False),
]


@pytest.mark.parametrize(("body", "valid"), [(b, v) for _, b, v in WORKFLOWS], ids=[n for n, _, _ in WORKFLOWS])
def test_the_workflow_schema_accepts_what_the_api_accepts(
    client: testing.TestClient, doc: Doc, body: Any, valid: bool
) -> None:
    assert schema_validator(doc, "WorkflowRequest").is_valid(body) is valid
    resp = client.simulate_post("/v1/workflows", json=body)
    assert resp.status_code == (202 if valid else 422), resp.text
    if valid:
        assert not list(schema_validator(doc, "Workflow").iter_errors(resp.json))


def test_a_held_step_may_leave_out_its_input_in_both(client: testing.TestClient, registry: TaskRegistry) -> None:
    # Given a task whose args need the result of the step before
    echo = registry.get("diagnostics.echo")
    assert echo is not None
    args = {"type": "object", "properties": {"input": {}}, "required": ["input"], "additionalProperties": False}
    registry.register([replace(echo, name="reports.summarize", args_schema=args)], registered_by="tests")
    doc = testing.TestClient(client.app).simulate_get("/openapi.json").json
    step = {"task": "reports.summarize"}
    # Then document and API agree: a later chain step or a chord callback may leave it out, a first step may not
    for body, valid in [
        ({"type": "chain", "steps": [ECHO, step]}, True),
        ({"type": "chord", "steps": [ECHO], "callback": step}, True),
        ({"type": "chain", "steps": [step, ECHO]}, False),
        ({"type": "group", "steps": [ECHO, step]}, False),
    ]:
        assert schema_validator(doc, "WorkflowRequest").is_valid(body) is valid, body
        assert client.simulate_post("/v1/workflows", json=body).status_code == (202 if valid else 422), body


SCHEDULE = {"id": "nightly-echo", "task": "diagnostics.echo", "args": {"message": "m"}, "cron": "0 2 * * *"}
SCHEDULES: list[tuple[str, dict[str, Any], bool]] = [
    ("cron", SCHEDULE, True),
    ("interval with every option", {**{k: v for k, v in SCHEDULE.items() if k != "cron"}, "interval_s": 3600,
     "timezone": "Europe/Berlin", "enabled": False, "misfire": "skip", "misfire_grace_s": 1}, True),
    ("cron and interval", {**SCHEDULE, "interval_s": 60}, False),
    ("neither cron nor interval", {k: v for k, v in SCHEDULE.items() if k != "cron"}, False),
    ("no id", {k: v for k, v in SCHEDULE.items() if k != "id"}, False),
    ("reserved id", {**SCHEDULE, "id": "maintenance.mine"}, False),
    ("unknown time zone", {**SCHEDULE, "timezone": "Mars/Olympus"}, False),
    ("grace under a second", {**SCHEDULE, "misfire_grace_s": 0.5}, False),
    ("unknown misfire policy", {**SCHEDULE, "misfire": "retry"}, False),
    ("bad args", {**SCHEDULE, "args": {}}, False),
]  # fmt: skip


@pytest.mark.parametrize(("body", "valid"), [(b, v) for _, b, v in SCHEDULES], ids=[n for n, _, _ in SCHEDULES])
def test_the_new_schedule_schema_accepts_what_the_api_accepts(
    client: testing.TestClient, doc: Doc, body: Any, valid: bool
) -> None:
    assert schema_validator(doc, "NewSchedule").is_valid(body) is valid
    resp = client.simulate_post("/v1/schedules", json=body, headers={"Authorization": f"Bearer {ADMIN}"})
    assert resp.status_code == (201 if valid else 422), resp.text
    if valid:
        assert not list(schema_validator(doc, "Schedule").iter_errors(resp.json))


def test_response_schemas_name_every_field_the_code_returns(doc: Doc) -> None:
    schemas = doc["components"]["schemas"]
    now = utcnow()
    job = Job(id="0", task="t.t", queue="q", status=JobStatus.RUNNING, args={}, max_retries=0, created_at=now,
              updated_at=now, cancel_requested=True)  # fmt: skip
    # callback_delivery: added by GET of one job submitted with a callback_url (test_push.py).
    assert {*job.to_api(), "callback_delivery"} == set(schemas["Job"]["properties"])
    workflow = Workflow(id="0", type="chain", status="running", job_ids=[], callback_job_id=None, created_at=now,
                        updated_at=now)  # fmt: skip
    assert {*workflow.to_api(), "callback_delivery"} == set(schemas["Workflow"]["properties"])
    assert set(QueueStats("q", 0, 0, 0, 0, 0.0).as_dict()) == set(schemas["QueueStats"]["required"])
    assert set(schemas["Schedule"]["required"]) == {"id", *DEFINITION_FIELDS, *READ_ONLY_FIELDS}


def test_list_answers_match_their_schemas(client: testing.TestClient, doc: Doc) -> None:
    client.simulate_post("/v1/jobs", json=ECHO)
    for path, name in [("/v1/jobs?limit=1", "JobPage"), ("/v1/tasks", "TaskList"), ("/v1/queues", "QueueList"),
                       ("/v1/queues/default/dead", "JobPage"), ("/v1/schedules", "ScheduleList")]:  # fmt: skip
        resp = client.simulate_get(path)
        assert resp.status_code == 200, path
        assert not list(schema_validator(doc, name).iter_errors(resp.json)), path
    problem = client.simulate_get("/v1/jobs/0193-nope")
    assert problem.status_code == 404 and problem.headers["content-type"] == "application/problem+json"
    assert not list(schema_validator(doc, "Problem").iter_errors(problem.json))
