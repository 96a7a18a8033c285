"""Metrics switched off (WORKER_METRICS=off) become no-ops; switched on, series start at 0."""

from __future__ import annotations

import subprocess
import sys

from prometheus_client import REGISTRY

from shared import metrics


def started_after(*steps: str) -> str:
    """``jobrelay_jobs_started_total{t, q}`` after ``steps`` in a fresh interpreter.

    NOTE: disable() rewrites module globals, so it runs in a process of its own.
    """
    script = "\n".join(
        [
            "from shared import metrics",
            *steps,
            "from prometheus_client import REGISTRY",
            "print(REGISTRY.get_sample_value('jobrelay_jobs_started_total', {'task': 't', 'queue': 'q'}))",
        ]
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.strip()


def test_disable_turns_every_metric_into_a_no_op() -> None:
    out = started_after(
        "metrics.disable()",
        "metrics.jobs_started_total.labels('t', 'q').inc()",
        "metrics.job_duration_seconds.labels('t', 'q').observe(1.0)",
        "metrics.jobs_in_progress.labels('t', 'q').dec()",
        "metrics.job_series('t', 'q').started.inc()",
    )
    assert out == "None"


def test_disable_drops_the_series_looked_up_before() -> None:
    out = started_after(
        "metrics.job_series('t', 'q')", "metrics.disable()", "metrics.job_series('t', 'q').started.inc()"
    )
    assert out == "0.0"


def test_job_series_write_the_labelled_series() -> None:
    series = metrics.job_series("series.task", "seriesq")
    assert series is metrics.job_series("series.task", "seriesq")
    series.started.inc()
    series.duration.observe(0.5)
    labels = {"task": "series.task", "queue": "seriesq"}
    assert REGISTRY.get_sample_value("jobrelay_jobs_started_total", labels) == 1.0
    assert REGISTRY.get_sample_value("jobrelay_job_duration_seconds_count", labels) == 1.0


def test_job_series_start_at_zero() -> None:
    metrics.start_job_series([("zero.task", "zeroq")])
    labels = {"task": "zero.task", "queue": "zeroq"}
    assert REGISTRY.get_sample_value("jobrelay_jobs_failed_total", labels) == 0.0
    assert REGISTRY.get_sample_value("jobrelay_jobs_in_progress", labels) == 0.0
