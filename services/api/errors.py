"""One place that turns errors into RFC 9457 problem+json responses."""

from __future__ import annotations

import json
import logging
from typing import Any

import falcon
import redis

from services.api.problems import PROBLEM, problem_body
from shared.errors import (
    BadRequest,
    Conflict,
    FieldError,
    Forbidden,
    InvalidInput,
    JobrelayError,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
)
from shared.store.disk_space import disk_full
from shared.store.engine import STORE_DOWN

#: A problem lists at most this many errors (a 1 MiB body can hold 60,000 wrong arguments).
MAX_ERRORS = 100
log = logging.getLogger(__name__)

#: The HTTP status of each class of the error tree; any other ``JobrelayError`` is a 500.
_STATUS: dict[type[JobrelayError], int] = {
    BadRequest: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    InvalidInput: 422,
    TooManyRequests: 429,
    Unavailable: 503,
}


def problem(
    resp: falcon.Response,
    status: int,
    title: str,
    detail: str,
    errors: list[FieldError] | None = None,
    **extra: Any,
) -> None:
    body = problem_body(status, title, detail)
    if errors:
        if len(errors) > MAX_ERRORS:
            body["detail"] = f"{detail} (the first {MAX_ERRORS} of {len(errors)} errors are listed)"
        body["errors"] = [{"path": e.path, "message": e.message} for e in errors[:MAX_ERRORS]]
    body.update(extra)
    resp.status = falcon.code_to_http_status(status)
    resp.content_type = PROBLEM
    resp.text = json.dumps(body)
    resp.complete = True


def handle_domain_error(req: falcon.Request, resp: falcon.Response, exc: JobrelayError, _params: Any) -> None:
    status = next((code for cls, code in _STATUS.items() if isinstance(exc, cls)), 500)
    if status == 401:
        resp.set_header("WWW-Authenticate", 'Bearer realm="jobrelay"')
    if status == 503:
        resp.set_header("Retry-After", "1")
    if isinstance(exc, TooManyRequests):
        resp.set_header("Retry-After", str(exc.retry_after_s))
    problem(resp, status, exc.title, exc.detail, exc.errors)


def handle_http_error(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError, _params: Any) -> None:
    status = falcon.http_status_to_code(exc.status)
    title = exc.title or "Error"
    detail = exc.description or title
    if status == 404:
        detail = detail if exc.description else f"no resource at {req.path}"
    if status == 405:
        resp.set_headers(exc.headers or {})
    problem(resp, status, title, detail)


def handle_dependency_down(req: falcon.Request, resp: falcon.Response, exc: Exception, _params: Any) -> None:
    """The job store or Redis did not answer: a clear 503, never a 500 (nothing was half-written)."""
    which = "Redis" if isinstance(exc, redis.RedisError) else "the job store"
    req.context.trace_error = exc
    log.warning("%s unavailable on %s %s: %s", which, req.method, req.path, type(exc).__name__)
    resp.set_header("Retry-After", "1")
    problem(resp, 503, "Service unavailable", f"{which} cannot be reached right now; try again shortly")


def handle_os_error(req: falcon.Request, resp: falcon.Response, exc: OSError, params: Any) -> None:
    """A full disk (ENOSPC, EDQUOT) answers 503, as a store that cannot write does; any other OSError is a 500."""
    if not disk_full(exc):
        handle_unexpected(req, resp, exc, params)
        return
    log.warning("no disk space on %s %s: %s", req.method, req.path, exc)
    req.context.trace_error = exc
    resp.set_header("Retry-After", "1")
    problem(resp, 503, "Service unavailable", "the server's disk is full; try again shortly")


def handle_unexpected(req: falcon.Request, resp: falcon.Response, exc: Exception, _params: Any) -> None:
    log.exception("unhandled error on %s %s", req.method, req.path)
    req.context.trace_error = exc
    problem(resp, 500, "Internal error", "the server failed to handle this request; it has been logged")


def install(app: falcon.App) -> None:
    # NOTE: Falcon picks the handler of the most specific class, so order does not matter here.
    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(falcon.HTTPError, handle_http_error)
    app.add_error_handler(JobrelayError, handle_domain_error)
    app.add_error_handler(OSError, handle_os_error)
    for store_down in STORE_DOWN:
        app.add_error_handler(store_down, handle_dependency_down)
    app.add_error_handler(redis.ConnectionError, handle_dependency_down)
    app.add_error_handler(redis.TimeoutError, handle_dependency_down)
