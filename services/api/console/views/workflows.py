"""Workflows: the recent ones, and one drawn as its steps (an inline SVG graph), each step linking to its job."""

from __future__ import annotations

from dataclasses import dataclass

import falcon

from services.api.console.queries import recent_workflows
from services.api.console.web import Page
from shared.job import Job

BOX_W, BOX_H, GAP_X, GAP_Y, PAD = 190, 54, 60, 18, 12


@dataclass(frozen=True)
class Node:
    job: Job | None
    job_id: str
    x: int
    y: int
    label: str


@dataclass(frozen=True)
class Edge:
    x1: int
    y1: int
    x2: int
    y2: int


def layout(
    kind: str, step_ids: list[str], callback_id: str | None, found: dict[str, Job]
) -> tuple[list[Node], list[Edge], int, int]:
    """Boxes and arrows: a chain left to right; a group as a column; a chord's group then its callback."""
    nodes: list[Node] = []
    edges: list[Edge] = []

    def node(job_id: str, x: int, y: int, label: str) -> Node:
        made = Node(job=found.get(job_id), job_id=job_id, x=x, y=y, label=label)
        nodes.append(made)
        return made

    if kind == "chain":
        for index, job_id in enumerate(step_ids):
            made = node(job_id, PAD + index * (BOX_W + GAP_X), PAD, f"step {index + 1}")
            if index:
                edges.append(Edge(made.x - GAP_X, PAD + BOX_H // 2, made.x, PAD + BOX_H // 2))
        width = PAD * 2 + len(step_ids) * (BOX_W + GAP_X) - GAP_X
        return nodes, edges, max(width, BOX_W + 2 * PAD), PAD * 2 + BOX_H
    column = [node(job_id, PAD, PAD + i * (BOX_H + GAP_Y), f"step {i + 1}") for i, job_id in enumerate(step_ids)]
    height = PAD * 2 + len(step_ids) * (BOX_H + GAP_Y) - GAP_Y
    width = PAD * 2 + BOX_W
    if callback_id is not None:
        cx, cy = PAD + BOX_W + GAP_X * 2, max(PAD, height // 2 - BOX_H // 2)
        node(callback_id, cx, cy, "callback")
        for step in column:
            edges.append(Edge(step.x + BOX_W, step.y + BOX_H // 2, cx, cy + BOX_H // 2))
        width = cx + BOX_W + PAD
    return nodes, edges, width, max(height, BOX_H + 2 * PAD)


class WorkflowsPage(Page):
    scopes = {"GET": "read"}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.render(req, resp, "workflows.html", workflows=recent_workflows(self.console.store))


class WorkflowPage(Page):
    scopes = {"GET": "read"}

    def on_get(self, req: falcon.Request, resp: falcon.Response, workflow_id: str) -> None:
        workflow = self.console.workflows.get(workflow_id)
        found = self.console.workflows.jobs_of(workflow)
        nodes, edges, width, height = layout(workflow.type, workflow.job_ids, workflow.callback_job_id, found)
        self.render(req, resp, "workflow.html", workflow=workflow, nodes=nodes, edges=edges, width=width,
                    height=height, box_w=BOX_W, box_h=BOX_H)  # fmt: skip
