"""Framing and header edges over a raw socket to a real gunicorn API, on both stores.

Each request is refused with a problem+json 4xx that says what is wrong,
stores nothing, and leaves the API answering; gunicorn decodes the framing,
so only a real server shows what a client on the wire gets.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.api_server import LAST_CHUNK, ApiServer, chunk, request_bytes

JOB = b'{"task": "diagnostics.echo", "args": {"message": "framed"}}'
Build = Callable[[str], bytes]


def _post(body: bytes = JOB, **options: Any) -> Build:
    return lambda token: request_bytes("POST", "/v1/jobs", token, body, **options)


def _chunks(*chunks: bytes, content_type: str | None = "application/json") -> Build:
    return _post(b"", chunks=list(chunks), content_type=content_type)


def _coded(coding: str) -> Build:
    """A well-chunked body under the codings ``coding`` (gunicorn decodes none but chunked)."""
    head = f"Transfer-Encoding: {coding}\r\n"
    return lambda token: (
        request_bytes("POST", "/v1/jobs", token, extra=head).replace(b"Content-Length: 0\r\n", b"")
        + chunk(JOB)
        + LAST_CHUNK
    )


EDGES: list[tuple[str, Build, int, str]] = [
    ("a chunk size that is not hex", _chunks(b"zz\r\n" + JOB + b"\r\n", LAST_CHUNK), 400, "chunk size"),
    ("a chunk size larger than the data", _chunks(b"fff\r\n" + JOB + b"\r\n"), 400, "could not be read"),
    ("a chunk without its CRLF", _chunks(b"5\r\nabcdefg", LAST_CHUNK), 400, "could not be read"),
    ("no last chunk", _chunks(chunk(JOB)), 400, "could not be read"),
    ("no chunk at all", _chunks(), 400, "could not be read"),
    ("gzip before chunked", _coded("gzip, chunked"), 400, "only chunked"),
    ("identity before chunked", _coded("identity, chunked"), 400, "only chunked"),
    ("chunked twice", _coded("chunked, chunked"), 400, "transfer-encoding"),
    ("an unknown coding", _coded("br"), 400, "only chunked"),
    ("gzip alone", _coded("gzip"), 400, "transfer-encoding"),
    ("a form-encoded body", _post(content_type="application/x-www-form-urlencoded"), 415, "application/json"),
    ("a body without Content-Type", _post(content_type=None), 415, "no content-type"),
    ("JSON in ISO-8859-1", _post(content_type="application/json; charset=iso-8859-1"), 415, "iso-8859-1"),
    ("a chunked body without Content-Type", _chunks(chunk(JOB), LAST_CHUNK, content_type=None), 415,
     "no content-type"),
    ("a key given twice", _post(JOB[:-1] + b', "task": "diagnostics.fail"}'), 400, "'task'"),
    ("U+0000 in an argument", _post(JOB.replace(b"framed", b"fr\\u0000med")), 422, "/args/message"),
]  # fmt: skip


@pytest.mark.parametrize(("build", "status", "says"), [e[1:] for e in EDGES], ids=[e[0] for e in EDGES])
def test_a_framing_or_header_edge_is_a_4xx_that_stores_nothing(
    api_server: ApiServer, build: Build, status: int, says: str
) -> None:
    # Given the API with nothing stored
    before = api_server.stored()
    # When the raw request arrives
    statuses, answer = api_server.exchange(build(api_server.token))
    # Then one problem+json answer says what is wrong, nothing is stored, and the API still answers
    head, _, body = answer.partition(b"\r\n\r\n")
    assert statuses == [status], answer[:600]
    assert b"application/problem+json" in head.lower(), head
    problem = json.loads(body)
    assert says in (problem["detail"] + json.dumps(problem.get("errors", []))).lower(), problem
    assert api_server.stored() == before
    assert api_server.healthy()


def test_a_well_framed_chunked_body_is_accepted(api_server: ApiServer) -> None:
    # A control: the same framing, correct, is a job
    before = api_server.stored()
    statuses, answer = api_server.exchange(
        request_bytes("POST", "/v1/jobs", api_server.token, chunks=[chunk(JOB[:10]), chunk(JOB[10:]), LAST_CHUNK])
    )
    assert statuses == [202], answer[:600]
    assert api_server.stored() == before + 1


def test_a_broken_chunk_on_a_kept_alive_connection_closes_it_after_one_answer(api_server: ApiServer) -> None:
    # Given a bad chunk followed, on the same connection, by what would read as another request
    request = request_bytes("POST", "/v1/jobs", api_server.token, chunks=[b"zz\r\n" + JOB + b"\r\n", LAST_CHUNK])
    request = request.replace(b"Connection: close\r\n", b"") + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    # When it is sent
    statuses, answer = api_server.exchange(request)
    # Then the API answers the first and closes: where the next request starts is unknown
    assert statuses == [400], answer[:800]
