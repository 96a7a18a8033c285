"""Gunicorn's gevent worker, answering the requests gunicorn itself refuses as the API does.

The API runs on gevent: one event loop per process serves every connection, and
the submit writer's group commit runs as greenlets beside the requests. With
gunicorn's threaded worker, each request handed the GIL between its pool thread,
the poller and the writer several times, and those hand-overs, not the work,
bounded the submit rate (docs/benchmarks.md). The store and Redis drivers
cooperate with gevent (sockets are patched; psycopg detects the patching); an
SQLite statement runs to its end without yielding, which the write lock keeps
short.

Gunicorn answers a request it cannot parse in HTML, and a ``Transfer-Encoding``
it does not know (even an empty one) with 501. The API's contract is
problem+json for every error and no 5xx for any content of a request, so
those answers are problem+json, and the transfer coding is a 400 naming the
header. The codings gunicorn knows but does not decode (``gzip, chunked``,
``identity``) would reach the app as if the body were plain: any coding but
``chunked`` alone is a 400 too, before the app sees the request.
"""

from __future__ import annotations

import json
from typing import Any

from gunicorn import util
from gunicorn.http.errors import InvalidHeader, UnsupportedTransferCoding
from gunicorn.workers.ggevent import GeventWorker

# NOTE: not services.api.errors: gunicorn's master imports this module before it forks, and a
# Redis client imported there escapes gevent's patching in the workers (gevent warns).
from services.api.problems import PROBLEM, problem_body


def write_problem(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """Gunicorn's ``util.write_error``, in problem+json."""
    body = json.dumps(problem_body(status_int, reason, mesg or reason)).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: {PROBLEM}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


def transfer_codings(headers: list[tuple[str, str]]) -> list[str]:
    """The codings of every ``Transfer-Encoding`` header, in order, lowercased (gunicorn uppercases names)."""
    return [
        coding.strip(" \t").lower()
        for name, value in headers
        if name == "TRANSFER-ENCODING"
        for coding in value.split(",")
    ]


class ApiWorker(GeventWorker):
    def init_process(self) -> None:
        # NOTE: gunicorn's worker calls ``util.write_error`` for every request it refuses itself.
        util.write_error = write_problem
        super().init_process()

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> None:
        codings = transfer_codings(req.headers)
        if codings and codings != ["chunked"]:
            # NOTE: raised here, the error reaches handle_error below, which answers and closes.
            raise InvalidHeader(f"Transfer-Encoding ({', '.join(codings)}): only chunked is supported")
        super().handle_request(listener_name, req, sock, addr)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        if isinstance(exc, UnsupportedTransferCoding):
            exc = InvalidHeader(f"Transfer-Encoding ({exc or 'empty'}): only chunked is supported")
        super().handle_error(req, client, addr, exc)
