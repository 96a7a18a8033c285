"""What a namespaced API key sees of workflows, schedules and jobs: its namespace's, under its own ids.

A key of a namespace gets 404, as for an unknown id, for another namespace's workflow or
schedule (``services/api/middleware.py`` does the same for jobs), so ids do not leak.

Schedule ids are chosen by their creator, so each namespace has its own: a namespaced key's
schedule ``nightly`` is stored as ``acme:nightly`` (``:`` is not allowed in a schedule id, so
no namespace's ids collide with another's or with the operator's). The key reads and writes
``nightly``, and its jobs show ``schedule_id: nightly``; a key without a namespace (the
operator) sees every schedule under its stored id.
"""

from __future__ import annotations

from typing import Any

import falcon

from services.api.middleware import namespace_of, sees_tracebacks
from shared.errors import NotFound
from shared.job import Job
from shared.store.schedules import Schedule
from shared.store.workflows import Workflow

SEPARATOR = ":"


def stored_schedule_id(req: falcon.Request, schedule_id: str) -> str:
    """The row id of the schedule the request's key calls ``schedule_id``."""
    namespace = namespace_of(req)
    return schedule_id if namespace is None else f"{namespace}{SEPARATOR}{schedule_id}"


def shown_schedule_id(req: falcon.Request, stored_id: str | None) -> str | None:
    """``stored_id`` as the request's key calls it (its namespace's prefix taken off)."""
    namespace = namespace_of(req)
    prefix = f"{namespace}{SEPARATOR}"
    if namespace is None or stored_id is None or not stored_id.startswith(prefix):
        return stored_id
    return stored_id[len(prefix) :]


def own_schedule(req: falcon.Request, schedule: Schedule, shown_id: str) -> Schedule:
    """``schedule`` if it is in the request's namespace, else the 404 of an unknown id."""
    namespace = namespace_of(req)
    if namespace is not None and schedule.namespace != namespace:
        raise NotFound(f"no schedule with id {shown_id!r}")
    return schedule


def own_workflow(req: falcon.Request, workflow: Workflow) -> Workflow:
    """``workflow`` if it is in the request's namespace, else the 404 of an unknown id."""
    namespace = namespace_of(req)
    if namespace is not None and workflow.namespace != namespace:
        raise NotFound(f"no workflow with id {workflow.id!r}")
    return workflow


def schedule_view(req: falcon.Request, schedule: Schedule) -> dict[str, Any]:
    body = schedule.to_api()
    body["id"] = shown_schedule_id(req, schedule.id)
    return body


def job_view(req: falcon.Request, job: Job) -> dict[str, Any]:
    """The job's JSON for this request: a traceback for admins only, its schedule under the key's id."""
    body = job.to_api(traceback=sees_tracebacks(req))
    if job.schedule_id is not None:
        body["schedule_id"] = shown_schedule_id(req, job.schedule_id)
    return body
