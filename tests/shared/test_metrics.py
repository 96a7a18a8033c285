"""Metrics switched off (WORKER_METRICS=off) become no-ops; switched on, series start at 0."""

from __future__ import annotations

import subprocess
import sys

from prometheus_client import REGISTRY

from shared import metrics


def test_disable_turns_every_metric_into_a_no_op() -> None:
    # NOTE: disable() rewrites module globals, so it runs in a fresh interpreter.
    script = (
        "from shared import metrics\n"
        "metrics.disable()\n"
        "metrics.jobs_started_total.labels('t', 'q').inc()\n"
        "metrics.job_duration_seconds.labels('t', 'q').observe(1.0)\n"
        "metrics.jobs_in_progress.labels('t', 'q').dec()\n"
        "from prometheus_client import REGISTRY\n"
        "print(REGISTRY.get_sample_value('jobrelay_jobs_started_total', {'task': 't', 'queue': 'q'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "None"


def test_job_series_start_at_zero() -> None:
    metrics.start_job_series([("zero.task", "zeroq")])
    labels = {"task": "zero.task", "queue": "zeroq"}
    assert REGISTRY.get_sample_value("jobrelay_jobs_failed_total", labels) == 0.0
    assert REGISTRY.get_sample_value("jobrelay_jobs_in_progress", labels) == 0.0
