"""The running API against its own ``/openapi.json``, property-based (schemathesis).

Every operation gets generated requests, valid and invalid, from the live
document: its examples, boundary values (the coverage phase), random ones
(fuzzing) and request chains along the document's links (stateful). Every
check runs: no 5xx, only documented statuses and content types, bodies and
headers that match their schemas, valid data accepted, invalid data refused,
missing or wrong tokens answered with 401. The number of examples is fixed and
the run deterministic, so a failure reproduces; how long it takes is not asserted
(a busy machine doubles it), only that every phase completed.

NOTE: this drives schemathesis' engine (what its CLI runs), not its pytest
plugin: the plugin's lazy loader, needed because the document only exists
once the stack runs, writes ``Node._nodeid``, which pytest 9.2 no longer has.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.engine import Status, StopReason, events, from_schema

from services.api.openapi import CRON_FORMAT
from tests.e2e.conftest import Stack

#: Fuzzed examples per operation and generation mode; the other phases add small fixed sets.
MAX_EXAMPLES = 40
SEED = 20240611

# NOTE: a minute on a quiet machine; the default 120 s would fail it on a busy one.
pytestmark = pytest.mark.timeout(600)


def _cron_field(lo: int, hi: int) -> st.SearchStrategy[str]:
    value = st.integers(lo, hi)
    return st.one_of(
        st.just("*"),
        value.map(str),
        st.integers(1, hi - lo).map(lambda step: f"*/{step}"),
        st.tuples(value, value).map(sorted).map(lambda pair: f"{pair[0]}-{pair[1]}"),
    )


#: Valid crontab(5) expressions, which no regular expression in the document could generate.
schemathesis.openapi.format(
    CRON_FORMAT,
    st.one_of(
        st.sampled_from(["@hourly", "@daily", "@weekly", "@monthly", "@yearly"]),
        st.tuples(_cron_field(0, 59), _cron_field(0, 23), _cron_field(1, 28), _cron_field(1, 12), _cron_field(0, 7))
        .map(" ".join),
    ),
)  # fmt: skip


#: Instants as the API takes an eta: any past one, and none more than 365 days ahead (the document can
#: say that only in words, and positive data must be accepted).
schemathesis.openapi.format(
    "date-time",
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime.now() + timedelta(days=300), timezones=st.just(UTC))
    .map(lambda moment: moment.isoformat()),
)  # fmt: skip


def _real_cursor(stack: Stack) -> str:
    """A cursor the API issued: a cursor is opaque, so only those are valid data."""
    for message in ("one", "two"):
        status, _ = stack.request("POST", "/v1/jobs", {"task": "diagnostics.echo", "args": {"message": message}})
        assert status == 202
    status, page = stack.request("GET", "/v1/jobs?limit=1")
    assert status == 200 and page["next_cursor"]
    return str(page["next_cursor"])


@pytest.fixture(scope="module")
def api_schema(stack: Stack) -> Iterator[schemathesis.BaseSchema]:
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "base-url": stack.base_url,
            "auth": {"openapi": {"bearer": {"bearer": stack.token}}},
            "request-timeout": 10,
            "parameters": {"query.cursor": _real_cursor(stack)},
            # NOTE: U+0000 in a string is refused (422; PostgreSQL text cannot hold it), which the document
            # cannot say of every string: positive data holds none. test_fuzz.py sends it.
            "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none",
                           "allow-x00": False},
            "checks": {"enabled": True},
            # Only the document's own links: an inferred one to /result would call a 404 "until there is one" a bug.
            "phases": {"stateful": {"inference": {"algorithms": []}}},
            # NOTE: the coverage phase walks every boundary of every step variant, with 1000-step workflows among
            # them: 40 s alone. Batches cover the same job request schema at every boundary in about a second.
            # Pause and resume take a queue name only: a few examples cover them (and pause no queue for long).
            "operations": [{"include-path": "/v1/workflows", "include-method": "POST",
                            "phases": {"coverage": {"enabled": False}}},
                           {"include-path-regex": "^/v1/queues/[^/]+/(pause|resume)$",
                            "generation": {"max-examples": 5}},
                           # An event stream lasts EVENTS_MAX_DURATION_S (1 s here): a few examples check it.
                           {"include-path-regex": "^/v1/(jobs/[^/]+/)?events$", "generation": {"max-examples": 5}}],
        }
    )  # fmt: skip
    yield schemathesis.openapi.from_url(f"{stack.base_url}/openapi.json", config=config)
    _cancel_running(stack)


def _cancel_running(stack: Stack, timeout_s: float = 15.0) -> None:
    """Interrupt the generated jobs still running (sleeps of up to an hour), so the stack stops at once."""
    deadline = time.monotonic() + timeout_s
    while True:
        code, page = stack.request("GET", "/v1/jobs?status=running&limit=500")
        assert code == 200
        if not page["items"] or time.monotonic() > deadline:
            return
        for job in page["items"]:
            if not job.get("cancel_requested"):
                stack.request("POST", f"/v1/jobs/{job['id']}/cancel")
        time.sleep(0.2)


def _describe(event: events.ScenarioFinished) -> list[str]:
    found = []
    recorder = event.recorder
    for case_id, checks in recorder.checks.items():
        for check in checks:
            if check.status != Status.FAILURE or check.failure_info is None:
                continue
            failure = check.failure_info.failure
            response = recorder.find_response(case_id=case_id)
            answer = f"-> {response.status_code} {response.text[:300]}" if response is not None else ""
            found.append(f"{recorder.label}: {check.name}: {failure.title}\n{failure.message}\n"
                         f"{check.failure_info.code_sample}\n{answer}")  # fmt: skip
    return found


def test_api_conforms_to_its_openapi_document(api_schema: schemathesis.BaseSchema) -> None:
    # Given the document the running API publishes
    started = time.monotonic()
    problems: list[str] = []
    operations: set[str] = set()
    finished: events.EngineFinished | None = None
    # When schemathesis runs every phase against the live server
    for event in from_schema(api_schema).execute():
        if isinstance(event, events.ScenarioFinished):
            operations.add(event.recorder.label)
            problems.extend(_describe(event))
        elif isinstance(event, events.NonFatalError):
            problems.append(f"{event.label}: {event.info.title}: {event.info.message}")
        elif isinstance(event, events.FatalError):
            raise event.exception
        elif isinstance(event, events.EngineFinished):
            finished = event
    # Then every check passed on every operation
    assert finished is not None
    problems.extend(f"run: {failure.title}: {failure.message}" for failure in finished.failures)
    assert not problems, f"{len(problems)} failures:\n\n" + "\n\n".join(dict.fromkeys(problems))
    assert finished.stop_reason == StopReason.COMPLETED, finished.stop_reason
    documented = {
        f"{method.upper()} {path}" for path, item in api_schema.raw_schema["paths"].items() for method in item
    }
    # NOTE: schemathesis leaves out the URL it loaded the document from.
    assert documented - {"GET /openapi.json"} <= operations, sorted(documented - operations)
    print(f"schemathesis: {len(operations)} operations in {time.monotonic() - started:.0f}s")
