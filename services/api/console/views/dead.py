"""Dead letters grouped by queue, task and error type; requeue one, a group, or all (admin, as on the API)."""

from __future__ import annotations

import falcon

from services.api.console.actions import requeue_dead
from services.api.console.queries import dead_groups, dead_ids_of_group
from services.api.console.web import Page, field
from shared.catalog import QUEUE_NAME
from shared.errors import FieldError, InvalidInput
from shared.store.jobs import JobFilter


class DeadLettersPage(Page):
    scopes = {"GET": "read", "POST": "admin"}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        store = self.console.store
        groups = dead_groups(store)
        latest = store.page(JobFilter(dead=True), limit=50).items
        total = sum(counts["dead"] for counts in store.queue_counts().values())
        grouped = sum(g["count"] for g in groups)
        self.render(req, resp, "dead.html", groups=groups, latest=latest, total=total, grouped=grouped)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """``scope``: ``one`` (``id`` and ``queue``), ``group`` (``queue``, ``task``, ``error_type``) or ``all``."""
        scope = field(req, "scope")
        store = self.console.store
        targets: dict[str, list[str]] = {}
        if scope == "one":
            job = store.get(field(req, "id"))
            targets[job.queue] = [job.id]
        elif scope == "group":
            queue = field(req, "queue")
            if not QUEUE_NAME.fullmatch(queue):
                raise InvalidInput("no such queue", [FieldError("/queue", "is not a queue name")])
            targets[queue] = dead_ids_of_group(store, queue, field(req, "task"), field(req, "error_type"))
        elif scope == "all":
            for queue in store.dead_queues():
                targets[queue] = dead_ids_of_group(store, queue, None, None)
        else:
            raise InvalidInput("choose what to requeue", [FieldError("/scope", "must be one, group or all")])
        done = sum(requeue_dead(self.console.submitter, queue, ids) for queue, ids in targets.items())
        self.render(req, resp, "done.html", title="Requeue dead letters", message=f"{done} requeued",
                    back="/console/dead")  # fmt: skip
