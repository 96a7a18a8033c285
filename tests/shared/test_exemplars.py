"""Exemplars on the duration histograms: the trace id of a sampled observation, in the OpenMetrics exposition,
with the metrics of several processes in one directory (multiprocess mode) and without."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from shared import exemplars, tracing
from shared.exemplars import ExemplarCollector
from shared.metrics import MULTIPROC_ENV


@pytest.fixture
def traced() -> Iterator[None]:
    provider = TracerProvider()
    tracing.use_tracer(provider.get_tracer("test"))
    try:
        yield
    finally:
        tracing.reset()


def exemplar_of(text: str, metric: str, le: str) -> str | None:
    match = re.search(
        rf'^{metric}_bucket{{le="{re.escape(le)}"[^}}]*}} \S+ # {{trace_id="([0-9a-f]{{32}})"}}', text, re.M
    )
    return match.group(1) if match else None


def test_in_one_process_the_bucket_gets_the_sampled_trace(traced: None) -> None:
    registry = CollectorRegistry()
    histogram = Histogram("t_seconds", "test", ("task",), buckets=(0.1, 1.0), registry=registry)
    with tracing.span("run") as current:
        exemplars.observe(histogram, ("echo",), 0.5)
    trace_id = f"{current.get_span_context().trace_id:032x}"
    assert exemplar_of(openmetrics_latest(registry).decode(), "t_seconds", "1.0") == trace_id
    # Outside a span, or untraced, an observation has none (and is still counted)
    exemplars.observe(histogram, ("other",), 0.05)
    assert 't_seconds_count{task="other"} 1.0' in generate_latest(registry).decode()


def test_an_unsampled_span_gives_no_exemplar() -> None:
    tracing.use_tracer(TracerProvider(sampler=ALWAYS_OFF).get_tracer("test"))
    try:
        registry = CollectorRegistry()
        histogram = Histogram("u_seconds", "test", ("task",), buckets=(1.0,), registry=registry)
        with tracing.span("run"):
            exemplars.observe(histogram, ("echo",), 0.5)
        assert "trace_id" not in openmetrics_latest(registry).decode()
    finally:
        tracing.reset()


def test_across_processes_the_buckets_get_the_newest_exemplar_on_file(
    traced: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given this process observing in a sampled span, in multiprocess mode (its exemplars go to its file)
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    monkeypatch.setattr(exemplars, "_written_at", 0.0)
    monkeypatch.setattr(exemplars, "_latest", {})
    histogram = Histogram("m_seconds", "test", ("task", "queue"), buckets=(0.005, 2.5), registry=CollectorRegistry())
    with tracing.span("run") as current:
        exemplars.observe(histogram, ("echo", "default"), 2.0)
    mine = f"{current.get_span_context().trace_id:032x}"
    assert (tmp_path / f"exemplars-{os.getpid()}.json").exists()
    # And two other processes' files, one newer than the other for the same bucket, and a torn one
    key = "m_seconds\x1fqueue=default\x1ftask=echo\x1f0.005"
    for name, trace_id, at in (("exemplars-1.json", "a" * 32, 100.0), ("exemplars-2.json", "b" * 32, 200.0)):
        (tmp_path / name).write_text(json.dumps({key: [trace_id, 0.003, at]}))
    (tmp_path / "exemplars-3.json").write_text("not json")
    # When the collector serves the metrics of every process (labels in name order, as the multiprocess one gives)
    metric = HistogramMetricFamily("m_seconds", "test", labels=["queue", "task"])
    metric.add_metric(["default", "echo"], buckets=[("0.005", 1.0), ("2.5", 2.0), ("+Inf", 2.0)], sum_value=2.003)

    class Inner:
        def collect(self) -> list[HistogramMetricFamily]:
            return [metric]

    registry = CollectorRegistry()
    registry.register(ExemplarCollector(Inner(), tmp_path))
    text = openmetrics_latest(registry).decode()
    # Then each bucket shows its newest exemplar
    assert exemplar_of(text, "m_seconds", "0.005") == "b" * 32
    assert exemplar_of(text, "m_seconds", "2.5") == mine
    assert "trace_id" not in generate_latest(registry).decode()
