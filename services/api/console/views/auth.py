"""Logging in (an API key for a session cookie), logging out, and the console's static files."""

from __future__ import annotations

import logging

import falcon

from services.api.console.web import HERE, Page, field, redirect

log = logging.getLogger(__name__)
_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}


def _safe_next(target: str) -> str:
    """Only a console path: an open redirect would hand the fresh session's first page to anyone."""
    if target.startswith("/console/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/console/"


class LoginPage(Page):
    login_required = False

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        next_url = _safe_next(str(req.params.get("next", "/console/")))
        self.render(req, resp, "login.html", next_url=next_url, message=None, auth=self.console.sessions.auth)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        next_url = _safe_next(field(req, "next", "/console/"))
        sessions = self.console.sessions
        key = None
        if sessions.auth:
            key = sessions.authenticate(field(req, "key").strip())
            if key is None:
                # NOTE: the key typed is never echoed back, logged or put in a URL.
                log.warning("console login refused: no API key matches (from %s)", req.remote_addr)
                self.render(req, resp, "login.html", next_url=next_url, auth=True,
                            message="That key is not one of this server's API keys.")  # fmt: skip
                resp.status = falcon.HTTP_401
                return
            if key.namespace is not None:
                # NOTE: the console's pages read every namespace's jobs; a tenant's key stays out of them.
                log.warning("console login refused: the key %r belongs to a namespace", key.name)
                self.render(req, resp, "login.html", next_url=next_url, auth=True,
                            message="A key of a namespace cannot open the console; use the API.")  # fmt: skip
                resp.status = falcon.HTTP_403
                return
        sessions.start(req, resp, key)
        log.info("console session started for the key %r", key.name if key else "anonymous")
        redirect(resp, next_url)


class LogoutPage(Page):
    scopes = {"POST": "read"}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.console.sessions.end(req, resp)
        redirect(resp, "/console/login")


class StaticFile(Page):
    login_required = False

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        path = HERE / "static" / name
        kind = _STATIC_TYPES.get(path.suffix)
        if kind is None or "/" in name or name.startswith(".") or not path.is_file():
            raise falcon.HTTPNotFound(description=f"no console file {name!r}")
        resp.content_type = kind
        resp.data = path.read_bytes()
        resp.set_header("Cache-Control", "max-age=300")
