"""The views' pure parts: the workflow graph's layout, schedules in words, the task form from a schema, chart lines."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from services.api.console.views.charts import CHART_H, polyline, queue_charts
from services.api.console.views.schedules import in_words, next_fires
from services.api.console.views.tasks import _value, form_fields
from services.api.console.views.workflows import BOX_W, layout
from shared.store.schedules import Schedule


def test_a_chain_runs_left_to_right_with_an_arrow_between_steps() -> None:
    nodes, edges, width, height = layout("chain", ["a", "b", "c"], None, {})
    assert [n.job_id for n in nodes] == ["a", "b", "c"]
    assert len({n.y for n in nodes}) == 1 and nodes[0].x < nodes[1].x < nodes[2].x
    assert len(edges) == 2 and all(e.x1 < e.x2 for e in edges)
    assert width >= nodes[2].x + BOX_W and height > 0


def test_a_group_is_a_column_and_a_chord_joins_it_to_its_callback() -> None:
    nodes, edges, _, _ = layout("group", ["a", "b"], None, {})
    assert len({n.x for n in nodes}) == 1 and edges == []
    nodes, edges, width, _ = layout("chord", ["a", "b", "c"], "cb", {})
    callback = nodes[-1]
    assert callback.label == "callback" and callback.x > nodes[0].x
    assert len(edges) == 3 and all(e.x2 == callback.x for e in edges)
    assert width >= callback.x + BOX_W


def test_schedules_in_words_and_their_next_fires() -> None:
    cron = Schedule(id="a", task="t.x", cron="0 2 * * *", interval_s=None, args={}, timezone="Europe/Berlin")
    assert in_words(cron) == "At 02:00 (Europe/Berlin)"
    every = Schedule(id="b", task="t.x", cron=None, interval_s=7200, args={})
    assert in_words(every) == "every 2 hours"
    assert in_words(Schedule(id="c", task="t.x", cron=None, interval_s=90, args={})) == "every 90 seconds"
    fires = next_fires(cron)
    assert len(fires) == 5 and fires == sorted(fires)
    assert all(f.astimezone(ZoneInfo("Europe/Berlin")).hour == 2 for f in fires)
    paused = Schedule(id="d", task="t.x", cron="0 2 * * *", interval_s=None, args={}, enabled=False)
    assert next_fires(paused) == []


def test_form_fields_from_a_schema_and_typed_values() -> None:
    schema = {
        "type": "object",
        "properties": {
            "seconds": {"type": "number"},
            "count": {"type": ["integer", "null"]},
            "loud": {"type": "boolean"},
            "format": {"enum": ["csv", "pdf"]},
            "to": {"type": "string"},
            "rows": {"type": "array"},
        },
        "required": ["seconds"],
    }
    kinds = {f["name"]: (f["kind"], f["required"]) for f in form_fields(schema)}
    assert kinds == {
        "seconds": ("number", True),
        "count": ("integer", False),
        "loud": ("boolean", False),
        "format": ("choice", False),
        "to": ("text", False),
        "rows": ("json", False),
    }
    assert _value("number", "1.5") == 1.5 and _value("number", "soon") == "soon"
    assert _value("boolean", "on") is True and _value("boolean", "") is False
    assert _value("json", "[1, 2]") == [1, 2] and _value("text", "42") == "42"


def test_chart_lines_scale_into_the_box() -> None:
    points = polyline([0, 5, 10], 10).split()
    assert points[0].endswith(f",{CHART_H:.1f}") and points[-1].endswith(",4.0")
    minutes = [[0, 0, 0]] * 59 + [[4, 2, 1]]
    [chart] = queue_charts({"default": {"in": 4, "out": 2, "failed": 1, "per_minute": minutes}})
    assert chart["failure_pct"] == 50.0 and chart["top"] == 4.0
