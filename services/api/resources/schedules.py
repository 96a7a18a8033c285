"""``/v1/schedules``: list, create, read, change and delete schedules.

Schedules from schedules.toml may be disabled (and enabled again) over the
API but not changed otherwise or deleted; the file is their source. The
built-in housekeeping schedules are read-only. A change reaches the running
scheduler leader within a couple of seconds (it polls the table's versions).

A namespaced key sees and changes only its namespace's schedules, under its own ids, and
their jobs run in its namespace (``services/api/tenancy.py``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import falcon

from services.api.body import read_json
from services.api.middleware import namespace_of
from services.api.tenancy import job_view, own_schedule, schedule_view, stored_schedule_id
from shared.errors import Conflict, FieldError, InvalidInput, NotFound
from shared.ids import new_id
from shared.job import Job, utcnow
from shared.schedules.definition import next_run_after_change, parse_schedule
from shared.store.schedules import DEFINITION_FIELDS, Schedule, ScheduleSource, ScheduleStore
from shared.store.tasks import TaskRegistry
from shared.submission.submitter import Submitter
from shared.submission.validation import build_scheduled_job


def find_own(req: falcon.Request, schedules: ScheduleStore, schedule_id: str) -> Schedule:
    """The schedule the request's key calls ``schedule_id``; 404 if it has none of that id."""
    found = schedules.find(stored_schedule_id(req, schedule_id))
    if found is None:
        raise NotFound(f"no schedule with id {schedule_id!r}")
    return own_schedule(req, found, schedule_id)


class SchedulesResource:
    scopes = {"GET": "read", "POST": "admin"}
    namespaced = True

    def __init__(self, schedules: ScheduleStore, registry: TaskRegistry, max_body_bytes: int) -> None:
        self.schedules = schedules
        self.registry = registry
        self.max_body_bytes = max_body_bytes

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        errors = [FieldError(f"/query/{name}", "is not a filter of this list") for name in sorted(req.params)]
        if errors:
            raise InvalidInput("the list query is invalid", errors)
        namespace = namespace_of(req)
        shown = [s for s in self.schedules.all() if namespace is None or s.namespace == namespace]
        resp.media = {"items": [schedule_view(req, schedule) for schedule in shown]}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json(req, self.max_body_bytes)
        given = body.get("id") if isinstance(body, dict) else None
        if isinstance(given, str) and self.schedules.find(stored_schedule_id(req, given)) is not None:
            raise Conflict(f"a schedule with id {given!r} exists already", [FieldError("/id", "is taken")])
        errors: list[FieldError] = []
        schedule = parse_schedule(body, registry=self.registry, errors=errors)
        if schedule is None:
            raise InvalidInput("the schedule is invalid", errors)
        schedule = replace(schedule, id=stored_schedule_id(req, schedule.id), namespace=namespace_of(req))
        schedule.next_run_at = next_run_after_change(schedule, None, utcnow())
        created = self.schedules.create(schedule)
        resp.status = falcon.HTTP_201
        resp.set_header("Location", f"/v1/schedules/{given}")
        resp.media = schedule_view(req, created)


class ScheduleResource:
    scopes = {"GET": "read", "PUT": "admin", "DELETE": "admin"}
    namespaced = True

    def __init__(self, schedules: ScheduleStore, registry: TaskRegistry, max_body_bytes: int) -> None:
        self.schedules = schedules
        self.registry = registry
        self.max_body_bytes = max_body_bytes

    def on_get(self, req: falcon.Request, resp: falcon.Response, schedule_id: str) -> None:
        resp.media = schedule_view(req, find_own(req, self.schedules, schedule_id))

    def on_put(self, req: falcon.Request, resp: falcon.Response, schedule_id: str) -> None:
        """Change a schedule; fields left out of the body keep their values."""
        current = find_own(req, self.schedules, schedule_id)
        if current.source == ScheduleSource.BUILTIN:
            raise Conflict(f"schedule {schedule_id!r} is built in and read-only")
        body: Any = read_json(req, self.max_body_bytes)
        if isinstance(body, dict) and body.get("id") == schedule_id:
            body = {**body, "id": current.id}  # the id as the key calls it: the stored one's
        errors: list[FieldError] = []
        updated = parse_schedule(body, registry=self.registry, errors=errors, current=current)
        if updated is None:
            raise InvalidInput("the schedule is invalid", errors)
        if current.source == ScheduleSource.FILE:
            locked = [
                FieldError(f"/{name}", "is set by the schedules file; change it there")
                for name in DEFINITION_FIELDS
                if name != "enabled" and getattr(updated, name) != getattr(current, name)
            ]
            if locked:
                raise Conflict(
                    f"schedule {schedule_id!r} comes from the schedules file; over the API it can only be "
                    "enabled or disabled",
                    locked,
                )
        if updated.definition() == current.definition():
            resp.media = schedule_view(req, current)
            return
        updated.next_run_at = next_run_after_change(updated, current, utcnow())
        resp.media = schedule_view(req, self.schedules.replace(updated, expected_version=current.version))

    def on_delete(self, req: falcon.Request, resp: falcon.Response, schedule_id: str) -> None:
        current = find_own(req, self.schedules, schedule_id)
        if current.source == ScheduleSource.BUILTIN:
            raise Conflict(f"schedule {schedule_id!r} is built in and read-only")
        if current.source == ScheduleSource.FILE or not self.schedules.delete(current.id, source=ScheduleSource.API):
            raise Conflict(
                f"schedule {schedule_id!r} comes from the schedules file: remove it there, or disable it over the API"
            )
        resp.status = falcon.HTTP_204


class ScheduleTriggerResource:
    """``POST /v1/schedules/{id}/trigger``: one job of the schedule's task and arguments now, outside its timing.

    The job carries the schedule's id (``schedule_id``), like the ones its trigger makes; the
    schedule's own next run is left as it is. Works for disabled schedules too.
    """

    scopes = {"POST": "admin"}
    namespaced = True

    def __init__(self, schedules: ScheduleStore, submitter: Submitter) -> None:
        self.schedules = schedules
        self.submitter = submitter

    def on_post(self, req: falcon.Request, resp: falcon.Response, schedule_id: str) -> None:
        stored = trigger_now(self.submitter, find_own(req, self.schedules, schedule_id), shown_id=schedule_id)
        resp.status = falcon.HTTP_202
        resp.set_header("Location", f"/v1/jobs/{stored.id}")
        resp.media = job_view(req, stored)


def trigger_now(submitter: Submitter, schedule: Schedule, *, shown_id: str | None = None) -> Job:
    """One job of the schedule's task and arguments now, outside its timing (the API's and the console's)."""
    if schedule.source == ScheduleSource.BUILTIN:
        # NOTE: housekeeping runs inside the scheduler leader, not as a task any worker has.
        name = shown_id or schedule.id
        raise Conflict(f"schedule {name!r} is built in: the scheduler runs it, it cannot be triggered")
    # A task no worker registers (any more) is a 422 from build_scheduled_job, naming it.
    job = build_scheduled_job(
        submitter.registry,
        job_id=new_id(),
        schedule_id=schedule.id,
        task=schedule.task,
        args=schedule.args,
        namespace=schedule.namespace,
    )
    [(stored, _created)] = submitter.submit([job])
    return stored
