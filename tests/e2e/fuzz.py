"""Fuzzing the running API from its OpenAPI document and from raw bytes, within a budget.

From the document, schemathesis generates valid and invalid requests for
every operation (U+0000 in strings included, which PostgreSQL cannot hold).
From raw bytes, hypothesis builds requests a client library would never
send: odd request lines, header values with control bytes, every
Content-Type and Transfer-Encoding edge, chunk framing gone wrong, bodies
cut short or too long, JSON with keys given twice or strings with U+0000,
sent over a socket that the client then closes for writing.

Each run finds what breaks the contract: a 5xx, a row stored for a request
that was refused, ``/healthz`` not answering (polled beside the fuzzing), a
gunicorn worker that died. ``tests/e2e/test_fuzz.py`` runs both small in
``make test``; ``bench/chaos.py`` runs them longer.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.engine import StopReason, events, from_schema

from shared.job import utcnow
from tests.e2e.api_server import LAST_CHUNK, ApiServer, chunk

SEED = 20261204
TOKEN = b"<token>"


@dataclass
class FuzzRun:
    """What one run sent and found; ``problems`` is empty when the contract held."""

    what: str
    requests: int = 0
    answers: Counter[int] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    health_checks: int = 0
    runtime_s: float = 0.0

    def summary(self) -> str:
        return (
            f"{self.what}: {self.requests} requests in {self.runtime_s:.1f} s, /healthz asked {self.health_checks} "
            f"times, answers {dict(sorted(self.answers.items()))}, {len(self.problems)} problem(s)"
        )


@contextmanager
def watched(server: ApiServer, run: FuzzRun, every_s: float = 0.1) -> Iterator[None]:
    """Ask ``/healthz`` every ``every_s`` on a fresh connection while the body runs; record misses and a
    gunicorn worker that changed (one that died of a request is replaced by the master)."""
    workers = server.worker_pids()
    stop = threading.Event()
    missed: list[str] = []

    def poll() -> None:
        while not stop.wait(every_s):
            run.health_checks += 1
            if not server.healthy(timeout_s=5.0):
                missed.append(time.strftime("%H:%M:%S"))

    thread = threading.Thread(target=poll, name="health-watch", daemon=True)
    started = time.monotonic()
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)
        run.runtime_s = time.monotonic() - started
    if missed:
        run.problems.append(f"/healthz did not answer at {missed}:\n{server.log_text()[-3000:]}")
    if server.worker_pids() != workers:
        run.problems.append(f"gunicorn's worker changed from {workers} to {server.worker_pids()}")


# -- from the OpenAPI document ---------------------------------------------------------------------


def openapi_fuzz(server: ApiServer, *, examples: int, seed: int = SEED) -> FuzzRun:
    """``examples`` requests per operation and generation mode (valid, invalid), plus the document's examples."""
    run = FuzzRun("OpenAPI fuzz (schemathesis)")
    config = schemathesis.Config.from_dict(
        {
            "seed": seed,
            "base-url": server.base_url,
            "auth": {"openapi": {"bearer": {"bearer": server.token}}},
            "request-timeout": 10,
            "generation": {"mode": "all", "max-examples": examples, "deterministic": True, "database": "none"},
            # Conformance is test_schemathesis.py's; here: the server's own errors only.
            "checks": {"enabled": False, "not_a_server_error": {"enabled": True}},
            "phases": {"coverage": {"enabled": False}, "stateful": {"enabled": False}},
            # An event stream lasts EVENTS_MAX_DURATION_S (1 s on the test server): a few examples check it.
            "operations": [{"include-path-regex": "^/v1/(jobs/[^/]+/)?events$", "generation": {"max-examples": 3}}],
        }
    )
    schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json", config=config)
    last_stored = server.stored()

    def after_call(context: Any, case: Any, response: Any) -> None:
        # NOTE: a job's row is committed before its 202, so a count taken now is final for this request.
        nonlocal last_stored
        stored = server.stored()
        run.requests += 1
        run.answers[response.status_code] += 1
        if response.status_code >= 400 and stored != last_stored:
            run.problems.append(f"{case.method} {case.formatted_path} -> {response.status_code} stored "
                                f"{stored - last_stored} row(s): {case.body!r}"[:2000])  # fmt: skip
        last_stored = stored

    schema.hooks.register_hook_with_name(after_call, "after_call")
    with watched(server, run):
        for event in from_schema(schema).execute():
            if isinstance(event, events.ScenarioFinished):
                run.problems.extend(_failures(event))
            elif isinstance(event, events.NonFatalError):
                run.problems.append(f"{event.label}: {event.info.title}: {event.info.message}")
            elif isinstance(event, events.FatalError):
                raise event.exception
            elif isinstance(event, events.EngineFinished) and event.stop_reason != StopReason.COMPLETED:
                run.problems.append(f"schemathesis stopped early: {event.stop_reason}")
    run.problems = list(dict.fromkeys(run.problems))
    return run


def _failures(event: events.ScenarioFinished) -> list[str]:
    found = []
    for case_id, checks in event.recorder.checks.items():
        for check in checks:
            if check.failure_info is not None:
                response = event.recorder.find_response(case_id=case_id)
                answer = f"-> {response.status_code} {response.text[:300]}" if response is not None else ""
                found.append(f"{event.recorder.label}: {check.name}: {check.failure_info.failure.title}\n"
                             f"{check.failure_info.code_sample}\n{answer}")  # fmt: skip
    return found


# -- from raw bytes --------------------------------------------------------------------------------

PATHS = [
    "/v1/jobs",
    "/v1/jobs/batch",
    "/v1/workflows",
    "/v1/schedules",
    "/v1/schedules/fuzzed",
    "/v1/queues/default/dead/requeue",
    "/v1/jobs/01a20c76-0050-7167-8644-a3d18baa66dd/cancel",
    "/v1/jobs?task=%00",
    "/v1/jobs/%00",
    "/v1/jobs?limit=%ff",
    "/healthz",
]
REQUEST_LINES = [
    b"{method} {path} HTTP/1.1",
    b"{method} {path} HTTP/1.0",
    b"{method} {path} HTTP/2.0",
    b"{method} {path}",
    b"{method}  {path} HTTP/1.1",
    b"{method} {path} HTTP/1.1 extra",
    b"{method} http://x{path} HTTP/1.1",
    b"{method} {path}\x00 HTTP/1.1",
    b"{method} {path}#frag HTTP/1.1",
    b"{method} * HTTP/1.1",
]
CONTENT_TYPES = [
    None,
    b"application/json",
    b"application/json; charset=utf-8",
    b"application/json; charset=iso-8859-1",
    b"application/json;",
    b"application/json; charset",
    b"application/x-www-form-urlencoded",
    b"text/plain",
    b"application/problem+json",
    b"",
    b"*/*",
]
CODINGS = [b"chunked", b"Chunked", b"gzip, chunked", b"identity", b"chunked, chunked", b"", b"x", b"chunked;q=1"]
HEADER_VALUES = st.binary(max_size=12) | st.sampled_from(
    [b"\x00", b"\r\nX-Injected: 1", b" folded\r\n continued", b"\xff"]
)
ODD_HEADERS = st.tuples(
    st.sampled_from(
        [b"Idempotency-Key", b"Expect", b"Content-Length", b"X-Request-ID", b"Host", b"X\x00", b"Bad Name"]
    ),
    HEADER_VALUES | st.sampled_from([b"100-continue", b"-1", b"0x10", b"99999999999999999999"]),
)
SOON = (utcnow() + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
JSON_TEXT = st.text(max_size=12) | st.sampled_from(["\x00", "a\x00b", "\ud800", "\uffff", "default", "nope"])
JOB_BODIES = st.fixed_dictionaries(
    {"task": st.sampled_from(["diagnostics.echo", "diagnostics.sleep", "no.such"]) | JSON_TEXT,
     "args": st.dictionaries(st.sampled_from(["message", "seconds"]) | JSON_TEXT,
                             JSON_TEXT | st.integers(-5, 5) | st.none(), max_size=2)},
    optional={"queue": st.sampled_from(["default", "reports", "nobody", "Bad"]) | JSON_TEXT,
              "eta": st.sampled_from([SOON, "9999-12-31T23:59:59Z", "2001-01-01T00:00:00Z", "soon"]),
              "idempotency_key": JSON_TEXT, "delay_s": st.integers(-1, 5), "priority": st.integers(-1, 10),
              "cron": st.sampled_from(["0 0 30 2 *", "@daily", "0 0 31 4 *"]), "id": JSON_TEXT},
)  # fmt: skip


def _encoded(value: Any) -> bytes:
    return json.dumps(value).encode("utf-8", "surrogatepass")


def _with_duplicate(body: dict[str, Any]) -> bytes:
    raw = _encoded(body)
    return raw[:-1] + b', "task": "diagnostics.fail"}' if raw != b"{}" else raw


VALID = {"task": "diagnostics.echo", "args": {"message": "fuzzed"}}
BODIES = st.one_of(
    st.sampled_from(
        [
            VALID,
            {**VALID, "queue": "reports"},
            {**VALID, "idempotency_key": "k"},
            {**VALID, "args": {"message": "a\x00b"}},
            {**VALID, "idempotency_key": "\x00"},
        ]
    ).map(_encoded),
    JOB_BODIES.map(_encoded),
    st.lists(JOB_BODIES, max_size=3).map(lambda jobs: _encoded({"jobs": jobs})),
    st.lists(JOB_BODIES, max_size=3).map(lambda steps: _encoded({"type": "chain", "steps": steps})),
    JOB_BODIES.map(_with_duplicate),
    st.binary(max_size=64),
    st.sampled_from([b"", b"[" * 5000, b'{"a": 1e999}', b'"\\ud800"', b"\xff\xfe", b'{"ids": ["\\u0000"]}', b"{}"]),
)


#: What a raw request gets wrong; most get one thing or none wrong, so they reach the app and the store.
DEFECTS = ["method", "request line", "token", "content type", "odd headers", "framing", "coding", "after"]


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    """One request as bytes, with ``TOKEN`` where the bearer token goes."""
    defects = draw(st.sets(st.sampled_from(DEFECTS), max_size=2))
    method = b"POST"
    if "method" in defects:
        method = draw(
            st.sampled_from([b"PUT", b"GET", b"DELETE", b"PATCH", b"OPTIONS"]) | st.binary(min_size=1, max_size=6)
        )
    path = draw(st.sampled_from(PATHS)).encode()
    line = draw(st.sampled_from(REQUEST_LINES)) if "request line" in defects else REQUEST_LINES[0]
    headers = [line.replace(b"{method}", method).replace(b"{path}", path), b"Host: x"]
    auth = draw(st.sampled_from([TOKEN + b"x", None])) if "token" in defects else TOKEN
    if auth is not None:
        headers.append(b"Authorization: Bearer " + auth)
    content_type = draw(st.sampled_from(CONTENT_TYPES)) if "content type" in defects else b"application/json"
    if content_type is not None:
        headers.append(b"Content-Type: " + content_type)
    if "odd headers" in defects:
        headers += [name + b": " + value for name, value in draw(st.lists(ODD_HEADERS, min_size=1, max_size=2))]
    if draw(st.booleans()):
        headers.append(b"Connection: close")
    body = draw(BODIES)
    framing = draw(st.sampled_from(["short", "long", "none", "bad chunks"])) if "framing" in defects else "length"
    if "coding" in defects or (framing == "length" and draw(st.booleans())):
        framing = "chunked"
    if framing == "length":
        headers.append(b"Content-Length: %d" % len(body))
    elif framing == "short":
        headers.append(b"Content-Length: %d" % max(len(body) - draw(st.integers(1, 5)), 0))
    elif framing == "long":
        headers.append(b"Content-Length: %d" % (len(body) + draw(st.integers(1, 1000))))
    elif framing in ("chunked", "bad chunks"):
        coding = draw(st.sampled_from(CODINGS)) if "coding" in defects else b"chunked"
        headers.append(b"Transfer-Encoding: " + coding)
        cut = draw(st.integers(0, len(body)))
        chunks = [chunk(piece) for piece in (body[:cut], body[cut:]) if piece] + [LAST_CHUNK]
        if framing == "bad chunks":
            broken = draw(st.sampled_from([b"zz\r\n", b"-1\r\n", b"1;\x00\r\n", b"ffffffffffffffffff\r\n", b"\r\n"]))
            at = draw(st.integers(0, len(chunks)))
            chunks = [*chunks[:at], broken, *chunks[at + draw(st.integers(0, 1)) :]]
        body = b"".join(chunks)
    after = (
        draw(st.sampled_from([b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", b"\r\n\r\n", b"\x00"]))
        if "after" in defects
        else b""
    )
    return b"\r\n".join(headers) + b"\r\n\r\n" + body + after


def raw_fuzz(server: ApiServer, *, examples: int) -> FuzzRun:
    """``examples`` raw requests; hypothesis stops at the first one that breaks the contract, made minimal."""
    run = FuzzRun("raw HTTP fuzz (hypothesis)")
    token = server.token.encode()

    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(request=raw_requests())
    def exchange(request: bytes) -> None:
        # Given what is stored now
        before = server.stored()
        # When the raw request is sent and the client stops sending
        statuses, answer = server.exchange(request.replace(TOKEN, token))
        run.requests += 1
        run.answers.update(statuses or [0])
        # Then no answer is a 5xx, a refusal stores nothing, and the API still answers
        assert all(status < 500 for status in statuses), (request, answer[:800])
        if not any(200 <= status < 300 for status in statuses):
            assert server.stored() == before, ("stored for a refused request", request, answer[:800])
        assert server.healthy(), (request, server.log_text()[-2000:])

    with watched(server, run):
        try:
            exchange()
        except AssertionError as exc:
            run.problems.append(f"{exc}"[:4000])
    return run
