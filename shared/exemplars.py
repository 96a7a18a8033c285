"""Exemplars on the duration histograms: the trace id of a recent observation in each bucket (OpenMetrics).

A Grafana panel of ``jobrelay_http_request_duration_seconds`` or ``jobrelay_job_duration_seconds``
then jumps from a slow bucket to a trace of it. Only observations made inside a sampled span
have one, so with tracing off this adds one function call and nothing else.

NOTE: prometheus_client drops exemplars in multiprocess mode (the API's gunicorn workers and the
worker processes share metric files). Each process here keeps the latest exemplar per bucket
and writes them, at most once a second, to ``exemplars-<pid>.json`` beside its metric files;
``ExemplarCollector`` puts the newest of all processes' on the buckets it serves. Exemplars are
shown only in the OpenMetrics exposition (a scrape sending ``Accept: application/openmetrics-text``).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Exemplar, Sample
from prometheus_client.utils import floatToGoString

from shared import tracing

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
WRITE_INTERVAL_S = 1.0

#: (metric name, labels, bucket ``le``) joined -> (trace id, value, unix time), of this process.
_latest: dict[str, tuple[str, float, float]] = {}
_lock = threading.Lock()
_written_at = 0.0


def observe(histogram: Histogram, labelvalues: tuple[str, ...], value: float, child: Any = None) -> None:
    """``histogram.labels(*labelvalues).observe(value)`` (or ``child``'s, when the caller holds it),
    with the current trace as the bucket's exemplar when a sampled span is current."""
    child = child if child is not None else histogram.labels(*labelvalues)
    trace_id = tracing.sampled_trace_id()
    if trace_id is None or not isinstance(child, Histogram):
        # Untraced, or metrics off (a stand-in that takes no exemplar).
        child.observe(value)
        return
    if not os.environ.get(MULTIPROC_ENV):
        child.observe(value, exemplar={"trace_id": trace_id})
        return
    child.observe(value)
    # NOTE: prometheus_client's private names; the metric's name as collected carries no suffix.
    bound = next(bound for bound in child._upper_bounds if value <= bound)
    key = _key(histogram._name, dict(zip(histogram._labelnames, labelvalues, strict=True)), floatToGoString(bound))
    with _lock:
        _latest[key] = (trace_id, value, time.time())
    _write_soon()


def _key(name: str, labels: dict[str, str], le: str) -> str:
    """The bucket's key, its labels in name order (the multiprocess collector's order is not the metric's)."""
    return "\x1f".join((name, *(f"{key}={labels[key]}" for key in sorted(labels)), le))


def _write_soon() -> None:
    """Write this process's exemplars to its file if the last write is a second old."""
    global _written_at
    now = time.monotonic()
    if now - _written_at < WRITE_INTERVAL_S:
        return
    _written_at = now
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return
    with _lock:
        data = json.dumps(_latest)
    path = Path(directory) / f"exemplars-{os.getpid()}.json"
    temporary = path.with_suffix(".tmp")
    try:
        temporary.write_text(data)
        temporary.replace(path)
    except OSError:
        # A full disk loses an exemplar, never a request or a job.
        return


def read_all(directory: Path) -> dict[str, tuple[str, float, float]]:
    """The newest exemplar per bucket over every process's file in ``directory``."""
    merged: dict[str, tuple[str, float, float]] = {}
    for path in directory.glob("exemplars-*.json"):
        try:
            found = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for key, (trace_id, value, at) in found.items():
            if key not in merged or merged[key][2] < at:
                merged[key] = (trace_id, value, at)
    return merged


class ExemplarCollector:
    """Another collector's metrics (the multiprocess one's), their buckets given the exemplars on file."""

    def __init__(self, inner: Any, directory: Path) -> None:
        self.inner = inner
        self.directory = directory

    def collect(self) -> Iterator[Metric]:
        exemplars = read_all(self.directory)
        for metric in self.inner.collect():
            if exemplars and metric.type == "histogram":
                metric.samples = [_with_exemplar(metric, sample, exemplars) for sample in metric.samples]
            yield metric


def _with_exemplar(metric: Metric, sample: Sample, exemplars: dict[str, tuple[str, float, float]]) -> Sample:
    if not sample.name.endswith("_bucket") or "le" not in sample.labels:
        return sample
    labels = {name: value for name, value in sample.labels.items() if name != "le"}
    found = exemplars.get(_key(metric.name, labels, sample.labels["le"]))
    if found is None:
        return sample
    trace_id, value, at = found
    return sample._replace(exemplar=Exemplar({"trace_id": trace_id}, value, at))
