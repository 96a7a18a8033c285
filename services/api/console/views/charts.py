"""Charts from the job store (no Prometheus needed): throughput and failure rate per queue, duration percentiles."""

from __future__ import annotations

from typing import Any

import falcon

from services.api.console.queries import duration_percentiles, rates
from services.api.console.web import Page

CHART_W, CHART_H = 600, 120


def polyline(values: list[float], top: float) -> str:
    """SVG points of ``values`` (one per minute) scaled into the chart's box."""
    if not values:
        return ""
    step = CHART_W / max(1, len(values) - 1)
    top = top or 1.0
    return " ".join(f"{i * step:.1f},{CHART_H - (v / top) * (CHART_H - 4):.1f}" for i, v in enumerate(values))


def queue_charts(per_queue: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    charts = []
    for queue in sorted(per_queue):
        minutes = per_queue[queue]["per_minute"]
        ins = [m[0] for m in minutes]
        outs = [m[1] for m in minutes]
        failure = [100.0 * m[2] / m[1] if m[1] else 0.0 for m in minutes]
        top = float(max([*ins, *outs, 1]))
        done = per_queue[queue]["out"]
        charts.append({
            "queue": queue,
            "in_points": polyline(ins, top),
            "out_points": polyline(outs, top),
            "fail_points": polyline(failure, 100.0),
            "top": top,
            "jobs_in": per_queue[queue]["in"],
            "jobs_out": done,
            "failure_pct": 100.0 * per_queue[queue]["failed"] / done if done else 0.0,
        })  # fmt: skip
    return charts


class ChartsPage(Page):
    scopes = {"GET": "read"}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        percentiles = duration_percentiles(self.console.store)
        longest = max([p["p99"] for p in percentiles.values()] or [1.0]) or 1.0
        self.render(req, resp, "charts.html", charts=queue_charts(rates(self.console.store)),
                    percentiles=sorted(percentiles.items()), longest=longest, chart_w=CHART_W,
                    chart_h=CHART_H)  # fmt: skip
