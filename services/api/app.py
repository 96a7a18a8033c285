"""The Falcon app factory: every dependency is passed in, nothing read from the environment."""

from __future__ import annotations

import time
from typing import Any

import falcon
from dramatiq.brokers.redis import RedisBroker

from services.api import errors
from services.api.console import Gate, add_console, build_console
from services.api.events import Streams
from services.api.middleware import Auth, RefuseNul, RequestId, Tracing
from services.api.quotas import Quotas
from services.api.resources.docs import add_docs
from services.api.resources.events import EventsResource, JobEventsResource
from services.api.resources.health import HealthResource, ReadyResource
from services.api.resources.jobs import (
    BatchResource,
    JobAttemptsResource,
    JobCancelResource,
    JobResource,
    JobResultResource,
    JobRetryResource,
    JobsResource,
)
from services.api.resources.openapi import OpenApiResource
from services.api.resources.queues import (
    DeadLettersResource,
    DeadRequeueResource,
    QueuePauseResource,
    QueueResumeResource,
    QueuesResource,
)
from services.api.resources.schedules import ScheduleResource, SchedulesResource, ScheduleTriggerResource
from services.api.resources.tasks import TasksResource
from services.api.resources.workflows import WorkflowCancelResource, WorkflowResource, WorkflowsResource
from shared import exemplars, metrics, tracing
from shared.results import build_result_storage
from shared.settings import Settings
from shared.store.jobs import JobStore
from shared.store.pauses import QueuePauses
from shared.store.schedules import ScheduleStore
from shared.store.tasks import TaskRegistry
from shared.store.workflows import WorkflowStore
from shared.submission.submitter import Submitter
from shared.workflows import WorkflowEngine

#: Routes that accept jobs: a 4xx or 503 there counts as a rejected submission.
SUBMIT_ROUTES = frozenset({"/v1/jobs", "/v1/jobs/batch", "/v1/workflows"})
REJECT_REASONS = {
    400: "malformed",
    401: "unauthorized",
    403: "forbidden",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "over_quota",
    503: "unavailable",
}


class Metrics:
    """Count and time every request by route template, never by raw path."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any, ok: bool) -> None:
        route = req.uri_template or "unmatched"
        elapsed = time.perf_counter() - getattr(req.context, "started", time.perf_counter())
        status = falcon.http_status_to_code(resp.status)
        metrics.http_requests_total.labels(req.method, route, str(status)).inc()
        exemplars.observe(metrics.http_request_duration_seconds, (req.method, route), elapsed)
        if req.method == "POST" and route in SUBMIT_ROUTES and status in REJECT_REASONS:
            metrics.jobs_rejected_total.labels(REJECT_REASONS[status]).inc()


class MetricsResource:
    public = True

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        data, content_type = metrics.exposition(req.get_header("Accept"))
        resp.data = data
        resp.content_type = content_type


def create_app(settings: Settings, *, store: JobStore, registry: TaskRegistry, broker: RedisBroker) -> falcon.App:
    middleware: list[Any] = [Metrics(), RequestId(), Auth(settings.api_keys, enabled=settings.api_auth), RefuseNul()]
    if tracing.enabled():
        # NOTE: first, so the request's span is the current one in every other middleware's log lines.
        middleware.insert(0, Tracing())
    app = falcon.App(middleware=middleware)
    app.req_options.strip_url_path_trailing_slash = True
    app.req_options.auto_parse_qs_csv = False
    app.resp_options.default_media_type = falcon.MEDIA_JSON
    errors.install(app)

    submitter = Submitter(
        store, registry, broker, settings.api_max_body_bytes, allow_private_callbacks=settings.callback_allow_private
    )
    workflows = WorkflowStore(store.engine)
    engine = WorkflowEngine(workflows, store, registry, broker)
    app.add_route("/healthz", HealthResource())
    app.add_route("/readyz", ReadyResource(store.engine, broker.client))
    app.add_route("/metrics", MetricsResource())
    app.add_route("/openapi.json", OpenApiResource(registry))
    add_docs(app)
    quotas = Quotas(settings.namespace_quotas, store, broker.client)
    app.add_route("/v1/jobs", JobsResource(submitter, quotas))
    app.add_route("/v1/jobs/batch", BatchResource(submitter, quotas))
    app.add_route("/v1/jobs/{job_id}", JobResource(store))
    app.add_route("/v1/jobs/{job_id}/attempts", JobAttemptsResource(store))
    streams = Streams(store, settings.events_max_streams, settings.events_max_duration_s)
    app.add_route("/v1/jobs/{job_id}/events", JobEventsResource(streams))
    app.add_route("/v1/events", EventsResource(streams))
    results = build_result_storage(settings.effective_result_storage_url)
    app.add_route("/v1/jobs/{job_id}/result", JobResultResource(store, results))
    app.add_route("/v1/jobs/{job_id}/cancel", JobCancelResource(store, engine))
    app.add_route("/v1/jobs/{job_id}/retry", JobRetryResource(submitter))
    app.add_route("/v1/tasks", TasksResource(registry))
    app.add_route("/v1/workflows", WorkflowsResource(submitter, workflows, quotas))
    app.add_route("/v1/workflows/{workflow_id}", WorkflowResource(workflows, store))
    app.add_route("/v1/workflows/{workflow_id}/cancel", WorkflowCancelResource(engine))
    app.add_route("/v1/queues", QueuesResource(submitter))
    pauses = QueuePauses(store.engine)
    app.add_route("/v1/queues/{name}/pause", QueuePauseResource(submitter, pauses))
    app.add_route("/v1/queues/{name}/resume", QueueResumeResource(submitter, pauses))
    app.add_route("/v1/queues/{name}/dead", DeadLettersResource(submitter))
    app.add_route("/v1/queues/{name}/dead/requeue", DeadRequeueResource(submitter))
    schedules = ScheduleStore(store.engine)
    app.add_route("/v1/schedules", SchedulesResource(schedules, registry, settings.api_max_body_bytes))
    app.add_route("/v1/schedules/{schedule_id}", ScheduleResource(schedules, registry, settings.api_max_body_bytes))
    app.add_route("/v1/schedules/{schedule_id}/trigger", ScheduleTriggerResource(schedules, submitter))
    console = build_console(
        settings,
        store=store,
        registry=registry,
        broker=broker,
        submitter=submitter,
        engine=engine,
        workflows=workflows,
        schedules=schedules,
        results=results,
        pauses=pauses,
    )
    app.add_middleware(Gate(console))
    add_console(app, console, api_domain_handler=errors.handle_domain_error, api_http_handler=errors.handle_http_error)
    return app
