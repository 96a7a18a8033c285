"""What every console page shares: its collaborators, the session gate, forms, and HTML rendering.

A page is a plain Falcon resource deriving from ``Page``. ``Gate`` (Falcon
middleware) runs before it: it finds the viewer from the session cookie,
sends a stranger to the login page, refuses a scope the viewer lacks (the same
scopes as the API) and any form POST whose CSRF token is missing or wrong.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import falcon
import jinja2
from dramatiq.brokers.redis import RedisBroker

from services.api.console.session import Sessions, csrf_matches
from shared.errors import FieldError, InvalidInput, JobrelayError
from shared.job import rfc3339
from shared.results import ResultStorage
from shared.store.jobs import JobStore
from shared.store.pauses import QueuePauses
from shared.store.schedules import ScheduleStore
from shared.store.tasks import TaskRegistry
from shared.store.workflows import WorkflowStore
from shared.submission.submitter import Submitter
from shared.workflows import WorkflowEngine

HERE = Path(__file__).parent
#: A console form is a few fields; anything bigger is not one of ours.
MAX_FORM_BYTES = 256 * 1024
HTML = "text/html; charset=utf-8"


@dataclass(frozen=True)
class Console:
    """The collaborators the pages use: the same objects the API's resources are given."""

    store: JobStore
    registry: TaskRegistry
    broker: RedisBroker
    submitter: Submitter
    engine: WorkflowEngine
    workflows: WorkflowStore
    schedules: ScheduleStore
    sessions: Sessions
    templates: jinja2.Environment
    results: ResultStorage
    pauses: QueuePauses
    grafana_url: str | None = None
    #: ``TRACES_URL``: a job page links to its trace there (``{trace_id}`` replaced).
    traces_url: str | None = None


class Page:
    """A console resource: HTML for a session, never for a bearer token.

    ``scopes`` says what each method needs, as on the API's resources.
    """

    # NOTE: public to the API's bearer-token Auth middleware: the console's Gate checks the session instead.
    public = True
    console_page = True
    login_required = True
    scopes: dict[str, str] = {"GET": "read", "POST": "write"}

    def __init__(self, console: Console) -> None:
        self.console = console

    def render(self, req: falcon.Request, resp: falcon.Response, template: str, **values: Any) -> None:
        resp.content_type = HTML
        resp.text = self.console.templates.get_template(template).render(
            viewer=getattr(req.context, "viewer", None),
            grafana_url=self.console.grafana_url,
            path=req.path,
            query=req.query_string,
            **values,
        )


def form(req: falcon.Request) -> dict[str, list[str]]:
    """The POSTed form, each field as a list of its values (checkboxes repeat a name)."""
    cached = getattr(req.context, "form", None)
    if cached is not None:
        return cached
    length = req.content_length or 0
    if length > MAX_FORM_BYTES:
        raise falcon.HTTPPayloadTooLarge(description=f"a console form holds at most {MAX_FORM_BYTES} bytes")
    raw = req.bounded_stream.read(MAX_FORM_BYTES + 1) if length else b""
    if len(raw) > MAX_FORM_BYTES:
        raise falcon.HTTPPayloadTooLarge(description=f"a console form holds at most {MAX_FORM_BYTES} bytes")
    try:
        parsed = urllib.parse.parse_qs(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=2000)
    except (UnicodeDecodeError, ValueError):
        raise falcon.HTTPBadRequest(description="the form is not URL-encoded UTF-8") from None
    # NOTE: PostgreSQL text cannot hold U+0000; refused here, as the API refuses it in JSON bodies.
    bad = [name for name, values in parsed.items() if "\x00" in name or any("\x00" in v for v in values)]
    if bad:
        raise InvalidInput(
            "a form value holds U+0000", [FieldError(f"/{name!r}", "must not contain U+0000") for name in bad]
        )
    req.context.form = parsed
    return parsed


def field(req: falcon.Request, name: str, default: str = "") -> str:
    values = form(req).get(name)
    return values[0] if values else default


def refuse(resp: falcon.Response, console: Console, req: falcon.Request, status: int, message: str) -> None:
    resp.status = falcon.code_to_http_status(status)
    resp.content_type = HTML
    resp.text = console.templates.get_template("error.html").render(
        viewer=getattr(req.context, "viewer", None),
        grafana_url=console.grafana_url,
        path=req.path,
        status=status,
        message=message,
    )
    resp.complete = True


class Gate:
    """Falcon middleware for console pages: session, scope and CSRF, before the page runs."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: Any, params: Any) -> None:
        if not getattr(resource, "console_page", False):
            return
        resp.set_header("Cache-Control", "no-store")
        resp.set_header("X-Frame-Options", "DENY")
        resp.set_header("Referrer-Policy", "same-origin")
        resp.set_header("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
        viewer = self.console.sessions.viewer(req)
        req.context.viewer = viewer
        if not resource.login_required:
            return
        if viewer is None:
            if req.method == "GET":
                target = req.relative_uri if req.path != "/console" else "/console/"
                raise falcon.HTTPSeeOther("/console/login?" + urllib.parse.urlencode({"next": target}))
            refuse(resp, self.console, req, 401, "Your session has ended or was never started: log in again.")
            return
        needed = resource.scopes.get(req.method, "admin")
        if not viewer.allows(needed):
            refuse(resp, self.console, req, 403, f"The key {viewer.name!r} lacks the {needed!r} scope this needs.")
            return
        if req.method == "POST" and not csrf_matches(viewer, field(req, "csrf")):
            refuse(resp, self.console, req, 403, "The form's CSRF token is missing or stale: reload the page.")


def install_error_pages(app: falcon.App, console: Console, api_domain: Any, api_http: Any) -> None:
    """Errors under /console answer as HTML pages; elsewhere as the API's problem+json."""

    def domain(req: falcon.Request, resp: falcon.Response, exc: JobrelayError, params: Any) -> None:
        if not req.path.startswith("/console"):
            api_domain(req, resp, exc, params)
            return
        api_domain(req, resp, exc, params)
        message = exc.detail + "".join(f"\n{e.path}: {e.message}" for e in exc.errors or [])
        refuse(resp, console, req, falcon.http_status_to_code(resp.status), message)

    def http(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError, params: Any) -> None:
        if not req.path.startswith("/console"):
            api_http(req, resp, exc, params)
            return
        status = falcon.http_status_to_code(exc.status)
        refuse(resp, console, req, status, exc.description or exc.title or "error")

    app.add_error_handler(JobrelayError, domain)
    app.add_error_handler(falcon.HTTPError, http)


# -- template filters ---------------------------------------------------------


def _when(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ago(value: datetime | None) -> str:
    if value is None:
        return "—"
    return _duration((datetime.now(UTC) - value).total_seconds()) + " ago"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def build_templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["ago"] = _ago
    env.filters["duration"] = _duration
    # The end of a traceback: where it was raised and why, the part a reader looks for.
    env.filters["excerpt"] = lambda text, chars=1500: text if len(text) <= chars else "…" + text[-chars:]
    env.filters["rfc3339"] = rfc3339
    env.filters["pretty"] = lambda value: json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)
    env.filters["qs"] = lambda values: urllib.parse.urlencode({k: v for k, v in values.items() if v})
    return env


def redirect(resp: falcon.Response, url: str) -> None:
    """303 to ``url``, keeping the cookies set on ``resp`` (a raised HTTPSeeOther would do too, less plainly)."""
    resp.status = falcon.HTTP_303
    resp.location = url
