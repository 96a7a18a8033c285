"""The task catalog, and a form per task built from its argument schema that submits a job."""

from __future__ import annotations

import json
from typing import Any

import falcon

from services.api.console.web import Page, form, redirect
from shared.errors import FieldError, NotFound
from shared.submission.validation import Submission, build_job


def form_fields(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """One input per top-level argument: its name, kind (number, integer, boolean, choice, text, json)."""
    properties = schema.get("properties", {}) if isinstance(schema, dict) else {}
    required = set(schema.get("required", [])) if isinstance(schema, dict) else set()
    fields = []
    for name, spec in properties.items():
        spec = spec if isinstance(spec, dict) else {}
        kinds = spec.get("type")
        if isinstance(kinds, list):
            kinds = next((k for k in kinds if k != "null"), "json")
        if "enum" in spec:
            kind = "choice"
        elif kinds in ("number", "integer", "boolean"):
            kind = kinds
        elif kinds == "string":
            kind = "text"
        else:
            kind = "json"
        fields.append({"name": name, "kind": kind, "required": name in required, "spec": spec,
                       "default": spec.get("default"), "choices": spec.get("enum", [])})  # fmt: skip
    return fields


def _value(kind: str, raw: str) -> Any:
    """The typed value of a form input; text that does not parse goes as it is, for the schema to refuse."""
    if kind == "boolean":
        return raw == "on"
    if kind in ("number", "integer", "json", "choice"):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


class TasksPage(Page):
    scopes = {"GET": "read"}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        specs = sorted(self.console.registry.all().values(), key=lambda spec: spec.name)
        self.render(req, resp, "tasks.html", specs=specs)


class TaskPage(Page):
    scopes = {"GET": "read", "POST": "write"}

    def _spec(self, name: str) -> Any:
        spec = self.console.registry.get(name)
        if spec is None:
            raise NotFound(f"no task named {name!r} is registered")
        return spec

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        spec = self._spec(name)
        self.render(req, resp, "task.html", spec=spec, fields=form_fields(spec.args_schema), values={}, errors={},
                    general=[])  # fmt: skip

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        spec = self._spec(name)
        fields = form_fields(spec.args_schema)
        posted = form(req)
        raw = {f["name"]: (posted.get(f"arg.{f['name']}") or [""])[0] for f in fields}
        args = {}
        for item in fields:
            text = raw[item["name"]]
            if text == "" and item["kind"] not in ("boolean", "text"):
                continue
            if text == "" and item["kind"] == "text" and not item["required"]:
                continue
            args[item["name"]] = _value(item["kind"], text)
        body: dict[str, Any] = {"task": spec.name, "args": args}
        errors: list[FieldError] = []
        job = build_job(body, "", self.console.registry, Submission(request_id=req.context.request_id), errors)
        if job is None:
            # The API's own 422 details: /args/<name> goes beside that field, the rest above the form.
            by_field: dict[str, list[str]] = {}
            general = []
            for error in errors:
                parts = error.path.split("/")
                if len(parts) >= 3 and parts[1] == "args" and parts[2] in raw:
                    by_field.setdefault(parts[2], []).append(error.message)
                else:
                    general.append(f"{error.path or '/'}: {error.message}")
            self.render(req, resp, "task.html", spec=spec, fields=fields, values=raw, errors=by_field,
                        general=general)  # fmt: skip
            resp.status = falcon.HTTP_422
            return
        [(stored, _created)] = self.console.submitter.submit_grouped([job])
        redirect(resp, f"/console/jobs/{stored.id}")
