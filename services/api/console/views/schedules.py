"""Schedules: each trigger in words, its next 5 fires and its last ones; pause, resume, trigger now, edit (admin)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import falcon
from cron_descriptor import ExpressionDescriptor, FormatError, Options

from services.api.console.actions import change_schedule
from services.api.console.queries import recent_fires
from services.api.console.web import Page, field, redirect
from services.api.resources.schedules import trigger_now
from shared.errors import FieldError, InvalidInput, JobrelayError
from shared.job import utcnow
from shared.schedules.triggers import build_trigger, first_tick_after
from shared.store.schedules import Schedule, ScheduleSource

NEXT_FIRES = 5


def in_words(schedule: Schedule) -> str:
    """ "At 02:00 (Europe/Berlin)", "every 300 s": the trigger as a person says it."""
    if schedule.interval_s is not None:
        return f"every {_interval(schedule.interval_s)}"
    options = Options()
    options.use_24hour_time_format = True
    try:
        words = ExpressionDescriptor(schedule.cron or "", options).get_description()
    except (FormatError, ValueError, KeyError):
        words = f"cron {schedule.cron}"
    return f"{words} ({schedule.timezone})"


def _interval(seconds: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds} seconds"


def next_fires(schedule: Schedule, count: int = NEXT_FIRES) -> list[datetime]:
    """The next ``count`` ticks after now (none while paused)."""
    if not schedule.enabled:
        return []
    trigger = build_trigger(schedule.cron, schedule.interval_s, schedule.timezone)
    fires: list[datetime] = []
    moment = utcnow()
    while len(fires) < count:
        tick = first_tick_after(trigger, moment)
        if tick is None:
            break
        fires.append(tick)
        moment = tick
    return fires


class SchedulesPage(Page):
    scopes = {"GET": "read"}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        rows = [{"schedule": s, "words": in_words(s), "next": next_fires(s, 1)} for s in self.console.schedules.all()]
        self.render(req, resp, "schedules.html", rows=rows)


class SchedulePage(Page):
    scopes = {"GET": "read", "POST": "admin"}

    def _show(self, req: falcon.Request, resp: falcon.Response, schedule: Schedule, **extra: Any) -> None:
        self.render(req, resp, "schedule.html", schedule=schedule, words=in_words(schedule),
                    fires=next_fires(schedule), recent=recent_fires(self.console.store, schedule.id),
                    args_text=json.dumps(schedule.args, indent=2, sort_keys=True),
                    editable=schedule.source == ScheduleSource.API, **extra)  # fmt: skip

    def on_get(self, req: falcon.Request, resp: falcon.Response, schedule_id: str) -> None:
        self._show(req, resp, self.console.schedules.get(schedule_id), errors=[], message=None)

    def on_post(self, req: falcon.Request, resp: falcon.Response, schedule_id: str) -> None:
        """``action``: pause, resume, trigger or edit (the edit form's fields)."""
        current = self.console.schedules.get(schedule_id)
        action = field(req, "action")
        console = self.console
        if action in ("pause", "resume"):
            change_schedule(console.schedules, console.registry, current, {"enabled": action == "resume"})
            redirect(resp, f"/console/schedules/{schedule_id}")
        elif action == "trigger":
            job = trigger_now(console.submitter, current)
            redirect(resp, f"/console/jobs/{job.id}")
        elif action == "edit":
            try:
                body = _edit_body(req)
                change_schedule(console.schedules, console.registry, current, body)
            except JobrelayError as exc:
                errors = [f"{e.path}: {e.message}" for e in exc.errors] or [exc.detail]
                self._show(req, resp, current, errors=errors, message=exc.detail)
                resp.status = falcon.HTTP_422 if isinstance(exc, InvalidInput) else falcon.HTTP_409
                return
            redirect(resp, f"/console/schedules/{schedule_id}")
        else:
            raise InvalidInput("unknown action", [FieldError("/action", "must be pause, resume, trigger or edit")])


def _edit_body(req: falcon.Request) -> dict[str, Any]:
    """The edit form as the API's PUT body: cron or interval, time zone, arguments (JSON)."""
    body: dict[str, Any] = {"timezone": field(req, "timezone").strip() or "UTC"}
    cron, interval = field(req, "cron").strip(), field(req, "interval_s").strip()
    body["cron"] = cron or None
    if interval:
        body["interval_s"] = int(interval) if interval.isdecimal() and len(interval) < 10 else interval
    else:
        body["interval_s"] = None
    try:
        body["args"] = json.loads(field(req, "args") or "{}")
    except ValueError as exc:
        raise InvalidInput("the arguments are not JSON", [FieldError("/args", f"is not JSON: {exc}")]) from None
    return body
