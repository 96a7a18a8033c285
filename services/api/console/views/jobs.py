"""The job list (filters, keyset pages, bulk cancel and retry) and one job's page."""

from __future__ import annotations

import json
import urllib.parse
from datetime import UTC, datetime
from typing import Any

import falcon

from services.api.console.actions import cancel_jobs, retry_jobs
from services.api.console.queries import BULK_MAX, JobQuery, count_matching, matching_ids, page_jobs
from services.api.console.web import Page, field, form, redirect
from shared.errors import FieldError, InvalidInput, NotFound
from shared.job import JobStatus
from shared.results import result_reference
from shared.store.attempts import attempt_views
from shared.store.jobs import JobFilter
from shared.tracing import trace_id_of

FILTERS = ("status", "task", "queue", "schedule_id", "workflow_id", "created_after", "created_before", "q")
PAGE_SIZE = 50


def _moment(raw: str, name: str, errors: list[FieldError]) -> datetime | None:
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        # NOTE: the form's datetime-local inputs carry no zone; the console shows and reads UTC.
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        errors.append(FieldError(f"/query/{name}", "must be a date and time such as 2026-01-31T14:00"))
        return None


def parse_filters(values: dict[str, str]) -> JobQuery:
    """The list's filters from the query string (or the bulk form), refused with 422 naming the bad one."""
    errors: list[FieldError] = []
    status = None
    if values.get("status"):
        try:
            status = JobStatus(values["status"])
        except ValueError:
            errors.append(FieldError("/query/status", f"must be one of {', '.join(s.value for s in JobStatus)}"))
    for name, value in values.items():
        if "\x00" in value or len(value) > 200:
            errors.append(FieldError(f"/query/{name}", "must be at most 200 characters, without U+0000"))
    after = _moment(values.get("created_after", ""), "created_after", errors)
    before = _moment(values.get("created_before", ""), "created_before", errors)
    if errors:
        raise InvalidInput("the job list's filters are invalid", errors)
    base = JobFilter(
        status=status,
        task=values.get("task") or None,
        queue=values.get("queue") or None,
        workflow_id=values.get("workflow_id") or None,
        schedule_id=values.get("schedule_id") or None,
        created_after=after,
    )
    return JobQuery(base=base, created_before=before, search=values.get("q") or None)


def _query_values(req: falcon.Request) -> dict[str, str]:
    values = {}
    for name in FILTERS:
        raw = req.params.get(name)
        values[name] = (raw[0] if isinstance(raw, list) else raw or "").strip()
    return values


class JobsPage(Page):
    scopes = {"GET": "read"}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        values = _query_values(req)
        query = parse_filters(values)
        cursor = req.params.get("cursor")
        if cursor is not None and not isinstance(cursor, str):
            raise InvalidInput("give the cursor once", [FieldError("/query/cursor", "give it once")])
        page = page_jobs(self.console.store, query, limit=PAGE_SIZE, cursor=cursor)
        next_url = None
        if page.next_cursor:
            next_url = "/console/jobs?" + urllib.parse.urlencode({**{k: v for k, v in values.items() if v},
                                                                   "cursor": page.next_cursor})  # fmt: skip
        self.render(
            req,
            resp,
            "jobs.html",
            jobs=page.items,
            filters=values,
            statuses=[s.value for s in JobStatus],
            tasks=sorted(self.console.registry.all()),
            queues=self.console.registry.queues(),
            next_url=next_url,
            first=cursor is None,
        )


class JobsBulkPage(Page):
    """Cancel or retry the chosen jobs, or all matching the filter: a count and a confirmation first."""

    scopes = {"POST": "write"}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        action = field(req, "action")
        if action not in ("cancel", "retry"):
            raise InvalidInput("choose cancel or retry", [FieldError("/action", "must be cancel or retry")])
        values = {name: field(req, name).strip() for name in FILTERS}
        every = field(req, "every") == "1"
        ids = [i for i in form(req).get("ids", []) if i]
        if not every and not ids:
            raise InvalidInput("no job was chosen", [FieldError("/ids", "tick at least one job, or choose all")])
        if len(ids) > BULK_MAX:
            raise InvalidInput("too many jobs", [FieldError("/ids", f"at most {BULK_MAX} at once")])
        query = parse_filters(values)
        if field(req, "confirm") != "1":
            count = count_matching(self.console.store, query) if every else len(ids)
            self.render(req, resp, "confirm.html", action=action, every=every, ids=ids, filters=values,
                        count=count, limit=BULK_MAX)  # fmt: skip
            return
        if every:
            ids = matching_ids(self.console.store, query)
        if action == "cancel":
            outcome = cancel_jobs(self.console.submitter, self.console.engine, ids)
        else:
            outcome = retry_jobs(self.console.submitter, ids)
        back = "/console/jobs?" + urllib.parse.urlencode({k: v for k, v in values.items() if v})
        self.render(req, resp, "done.html", title=f"{action.title()} jobs", message=outcome.message, back=back)


class JobPage(Page):
    scopes = {"GET": "read"}

    def on_get(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        job = self.console.store.get(job_id)
        viewer = req.context.viewer
        error = job.error
        if error and not viewer.allows("admin"):
            error = {key: value for key, value in error.items() if key != "traceback"}
        template = "job_live.html" if req.params.get("part") == "live" else "job.html"
        trace_id = trace_id_of(job.traceparent)
        traces_url = self.console.traces_url
        trace_url = traces_url.replace("{trace_id}", trace_id) if traces_url and trace_id else None
        attempts = _attempts(self.console.store.attempt_history(job_id), traceback=viewer.allows("admin"))
        self.render(req, resp, template, job=job, error=error, progress=_progress(job.progress), trace_url=trace_url,
                    attempts=attempts)  # fmt: skip


def _attempts(rows: list[dict[str, Any]], *, traceback: bool) -> list[dict[str, Any]]:
    """The ended attempts for the timeline: the rows' times, with the API's error, duration and backoff."""
    return [
        {**row, **{key: view[key] for key in ("error", "duration_s", "backoff_s")}}
        for row, view in zip(rows, attempt_views(rows, traceback=traceback), strict=True)
    ]


def _progress(progress: dict[str, Any] | None) -> dict[str, Any] | None:
    if not isinstance(progress, dict):
        return None
    current, total = progress.get("current"), progress.get("total")
    percent = None
    if isinstance(current, int | float) and isinstance(total, int | float) and total > 0:
        percent = max(0, min(100, round(100 * current / total)))
    return {"current": current, "total": total, "percent": percent, "message": progress.get("message") or ""}


class JobActionPage(Page):
    """``POST /console/jobs/{id}/cancel`` and ``/retry``: the job page's buttons."""

    scopes = {"POST": "write"}

    def on_post(self, req: falcon.Request, resp: falcon.Response, job_id: str, action: str) -> None:
        if action not in ("cancel", "retry"):
            raise NotFound(f"no job action {action!r}")
        self.console.store.get(job_id)
        if action == "cancel":
            outcome = cancel_jobs(self.console.submitter, self.console.engine, [job_id])
        else:
            outcome = retry_jobs(self.console.submitter, [job_id])
        if outcome.skipped:
            self.render(req, resp, "done.html", title=f"{action.title()} job", message=outcome.skipped[0],
                        back=f"/console/jobs/{job_id}")  # fmt: skip
            resp.status = falcon.HTTP_409
            return
        redirect(resp, f"/console/jobs/{job_id}")


class JobResultPage(Page):
    """The result file of a job, for the session (the API's ``/v1/jobs/{id}/result`` wants a bearer token)."""

    scopes = {"GET": "read"}

    def on_get(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        job = self.console.store.get(job_id)
        if job.status != JobStatus.SUCCEEDED:
            raise NotFound(f"job {job_id} has no result yet (it is {job.status.value})")
        if job.result_url is None:
            resp.text = json.dumps(job.result)
            resp.content_type = falcon.MEDIA_JSON
            return
        try:
            resp.data, resp.content_type = self.console.results.open(result_reference(job.id))
        except FileNotFoundError:
            raise NotFound(f"the result file of job {job_id} is gone (pruned or storage changed)") from None
        resp.downloadable_as = f"{job.task}-{job.id}"
