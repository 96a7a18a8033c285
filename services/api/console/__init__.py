"""The operator console: server-rendered pages at ``/console/``, served by the API process itself.

``add_console`` wires its pages into the app ``create_app`` builds, with the
same store, registry, broker and submitter the API's resources use; a session
cookie (``session.py``) stands in for the bearer token, with the same scopes.
"""

from __future__ import annotations

from typing import Any

import falcon

from services.api.console.session import Sessions
from services.api.console.views.auth import LoginPage, LogoutPage, StaticFile
from services.api.console.views.charts import ChartsPage
from services.api.console.views.dead import DeadLettersPage
from services.api.console.views.jobs import JobActionPage, JobPage, JobResultPage, JobsBulkPage, JobsPage
from services.api.console.views.overview import OverviewPage
from services.api.console.views.schedules import SchedulePage, SchedulesPage
from services.api.console.views.tasks import TaskPage, TasksPage
from services.api.console.views.workflows import WorkflowPage, WorkflowsPage
from services.api.console.web import Console, Gate, build_templates, install_error_pages
from shared.settings import Settings

__all__ = ["Console", "Gate", "add_console", "build_console"]


def build_console(settings: Settings, **collaborators: Any) -> Console:
    """The console's collaborators; ``collaborators`` are the objects ``create_app`` made for the API."""
    return Console(
        sessions=Sessions(settings.api_keys, auth=settings.api_auth),
        templates=build_templates(),
        grafana_url=settings.grafana_url,
        traces_url=settings.traces_url,
        **collaborators,
    )


def add_console(app: falcon.App, console: Console, *, api_domain_handler: Any, api_http_handler: Any) -> None:
    """Routes under /console; the app's middleware must include ``Gate(console)``."""
    install_error_pages(app, console, api_domain_handler, api_http_handler)
    routes: list[tuple[str, Any]] = [
        ("/console", OverviewPage(console)),
        ("/console/login", LoginPage(console)),
        ("/console/logout", LogoutPage(console)),
        ("/console/static/{name}", StaticFile(console)),
        ("/console/jobs", JobsPage(console)),
        ("/console/jobs/bulk", JobsBulkPage(console)),
        ("/console/jobs/{job_id}", JobPage(console)),
        ("/console/jobs/{job_id}/result", JobResultPage(console)),
        ("/console/jobs/{job_id}/{action}", JobActionPage(console)),
        ("/console/dead", DeadLettersPage(console)),
        ("/console/workflows", WorkflowsPage(console)),
        ("/console/workflows/{workflow_id}", WorkflowPage(console)),
        ("/console/schedules", SchedulesPage(console)),
        ("/console/schedules/{schedule_id}", SchedulePage(console)),
        ("/console/tasks", TasksPage(console)),
        ("/console/tasks/{name}", TaskPage(console)),
        ("/console/charts", ChartsPage(console)),
    ]
    for path, resource in routes:
        app.add_route(path, resource)
