"""Falcon middleware: request ids, bearer-token auth with scopes, body limits."""

from __future__ import annotations

import hmac
import re
from typing import Any

import falcon

from shared import tracing
from shared.errors import Forbidden, NotFound, Unauthorized
from shared.ids import new_id
from shared.job import Job
from shared.logs import reset_log_context, set_log_context
from shared.settings import ApiKey

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class RequestId:
    """Take a sane ``X-Request-ID`` from the client or make one; echo it and log with it."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        given = req.get_header("X-Request-ID")
        req.context.request_id = given if given and _REQUEST_ID.match(given) else new_id()
        req.context.log_token = set_log_context(request_id=req.context.request_id)
        resp.set_header("X-Request-ID", req.context.request_id)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any, ok: bool) -> None:
        token = getattr(req.context, "log_token", None)
        if token is not None:
            reset_log_context(token)


class Tracing:
    """A server span per request, the parent of the store commit and the publish (``shared/tracing.py``).

    Installed only when tracing is on; first in the chain, so its span covers the others. A W3C
    ``traceparent`` header from the client is honoured: the request joins the caller's trace.
    """

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.trace = tracing.start(
            f"{req.method} {req.path}",
            kind="server",
            attributes={"http.request.method": req.method, "url.path": req.path, "url.scheme": req.scheme},
            parent=req.get_header("traceparent"),
        )

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any, ok: bool) -> None:
        started = getattr(req.context, "trace", None)
        if started is None:
            return
        opened = started[0]
        status = falcon.http_status_to_code(resp.status)
        # NOTE: named by route template once routed, never by raw path (ids make every name unique).
        opened.update_name(f"{req.method} {req.uri_template or 'unmatched'}")
        if req.uri_template:
            opened.set_attribute("http.route", req.uri_template)
        opened.set_attribute("http.response.status_code", status)
        error = getattr(req.context, "trace_error", None)
        tracing.finish(started, error if status >= 500 else None)


class RefuseNul:
    """PostgreSQL text cannot hold U+0000, so a path with one names nothing that can exist."""

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: Any, params: Any) -> None:
        if any("\x00" in str(value) for value in (params or {}).values()):
            raise NotFound(f"no resource at {req.path!r}")


class Auth:
    """Bearer tokens from ``API_KEYS``; a resource says which scope each method needs.

    A resource declares ``scopes = {"GET": "read", "POST": "write"}``, or
    ``public = True`` for the service endpoints.
    """

    def __init__(self, keys: tuple[ApiKey, ...], *, enabled: bool = True) -> None:
        self.keys = keys
        self.enabled = enabled

    def identify(self, header: str | None) -> ApiKey | None:
        if not header or not header.startswith("Bearer "):
            return None
        presented = header[len("Bearer ") :].strip().encode()
        match = None
        # NOTE: compare against every key, in constant time each, so timing reveals nothing.
        for key in self.keys:
            if hmac.compare_digest(presented, key.token.encode()):
                match = key
        return match

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: Any, params: Any) -> None:
        if resource is None or getattr(resource, "public", False) or not self.enabled or req.method == "OPTIONS":
            return
        key = self.identify(req.get_header("Authorization"))
        if key is None:
            raise Unauthorized("a valid bearer token is required (Authorization: Bearer <token>)")
        if key.namespace is not None and not getattr(resource, "namespaced", False):
            # NOTE: only the resources that keep to the key's namespace (jobs, workflows, schedules, dead
            # letters) take a namespaced key; the queues (stats, pausing) are shared by every namespace.
            raise Forbidden(f"the key {key.name!r} belongs to namespace {key.namespace!r}; this path is not open to it")
        needed = getattr(resource, "scopes", {}).get(req.method, "admin")
        if not key.allows(needed):
            raise Forbidden(f"the key {key.name!r} lacks the {needed!r} scope this request needs")
        req.context.api_key = key


def namespace_of(req: falcon.Request) -> str | None:
    """The namespace of the request's key; None for a key without one (or auth off): every job."""
    key = getattr(req.context, "api_key", None)
    return key.namespace if key is not None else None


def submitted_by(req: falcon.Request) -> str | None:
    key = getattr(req.context, "api_key", None)
    return key.name if key is not None else None


def visible(req: falcon.Request, job: Job) -> Job:
    """``job`` if the request's key may see it, else ``NotFound`` as for an unknown id (so ids do not leak)."""
    namespace = namespace_of(req)
    if namespace is not None and job.namespace != namespace:
        raise NotFound(f"no job with id {job.id!r}")
    return job


def sees_tracebacks(req: falcon.Request) -> bool:
    """Whether this request's key may read a failed job's traceback (admin scope, or auth off)."""
    key = getattr(req.context, "api_key", None)
    return key is None or key.allows("admin")
