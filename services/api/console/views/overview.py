"""The overview: queues, workers, the scheduler and totals, refreshed in place every 2 s."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import falcon
import redis

from services.api.console.actions import switch_queue
from services.api.console.queries import rates, running_by_owner, state_totals
from services.api.console.web import Page, field, redirect
from shared.broker.orphans import HEARTBEATS
from shared.broker.queues import queue_stats
from shared.broker.workers import described_workers
from shared.errors import FieldError, InvalidInput
from shared.job import JobStatus

#: The scheduler's lease key (services/scheduler/leader.py; the API may not import services.scheduler).
LEADER_KEY = "jobrelay:scheduler:leader"
#: A worker whose last beat is older than this is shown as silent.
SILENT_AFTER_S = 30.0


@dataclass(frozen=True)
class WorkerRow:
    owner: str
    host: str
    pid: int | None
    queues: tuple[str, ...]
    shape: str
    last_beat: datetime
    silent: bool
    running: int


def _workers(client: redis.Redis, running: dict[str, int]) -> list[WorkerRow]:
    """Each worker process with a heartbeat, joined to its description (``shared/broker/workers.py``)."""
    beats: list[tuple[bytes, float]] = client.zrange(HEARTBEATS, 0, -1, withscores=True)  # type: ignore[assignment]
    described = described_workers(client)
    now_s = time.time()
    rows = []
    for raw, score_ms in beats:
        owner = raw.decode()
        info = described.get(owner)
        # NOTE: the supervisor names a worker process host-slot-suffix; a process that did not
        # describe itself (an older worker) shows the host from its name.
        host = info.host if info else owner.rpartition("-")[0].rpartition("-")[0] or owner
        rows.append(
            WorkerRow(
                owner=owner,
                host=host,
                pid=info.pid if info else None,
                queues=info.queues if info else (),
                shape=f"{info.processes} \N{MULTIPLICATION SIGN} {info.threads}" if info else "—",
                last_beat=datetime.fromtimestamp(score_ms / 1000, UTC),
                silent=now_s - score_ms / 1000 > SILENT_AFTER_S,
                running=running.get(owner, 0),
            )
        )
    return sorted(rows, key=lambda row: row.owner)


def overview(page: Page) -> dict[str, Any]:
    console = page.console
    client = console.broker.client
    queues = console.registry.queues()
    stats = queue_stats(client, console.store, queues)
    per_queue = rates(console.store)
    leader = client.get(LEADER_KEY)
    schedules = console.schedules.all()
    last_fire = max((s.last_run_at for s in schedules if s.last_run_at), default=None)
    counts, estimated = state_totals(console.store)
    rows = []
    for item in stats:
        rate = per_queue.get(item.name, {"in": 0, "out": 0, "failed": 0})
        row = item.as_dict()
        row["in_per_min"] = rate["in"] / 60
        row["out_per_min"] = rate["out"] / 60
        rows.append(row)
    return {
        "queues": rows,
        "workers": _workers(client, running_by_owner(console.store)),
        "leader": leader.decode() if isinstance(leader, bytes) else leader,
        "last_fire": last_fire,
        "totals": [(status.value, counts.get(status.value, 0), estimated and status.is_final) for status in JobStatus],
        "estimated": estimated,
        "now": datetime.now(UTC),
    }


class OverviewPage(Page):
    """The overview; its POST pauses or resumes a queue (admin, as ``POST /v1/queues/{name}/pause``)."""

    scopes = {"GET": "read", "POST": "admin"}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        template = "overview_live.html" if req.params.get("part") == "live" else "overview.html"
        self.render(req, resp, template, **overview(self))

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        action = field(req, "action")
        if action not in ("pause", "resume"):
            raise InvalidInput("choose pause or resume", [FieldError("/action", "must be pause or resume")])
        switch_queue(self.console.submitter, self.console.pauses, field(req, "queue"), pause=action == "pause",
                     by=req.context.viewer.name)  # fmt: skip
        redirect(resp, "/console/")
