"""Tracing's propagation: a job's traceparent rides its message (published now or by the outbox relay), its
trace id shows in its JSON and in log lines; off, nothing is traced and the row's traceparent passes through.

Spans go to the SDK's in-memory exporter; the brokers are Dramatiq's StubBroker, the store its twin.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import ClassVar

import pytest
import redis
from dramatiq import Message
from dramatiq.brokers.stub import StubBroker
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from services.scheduler.relay import relay
from shared import tracing
from shared.broker.publishing import message_for, publish
from shared.clock import FakeClock
from shared.ids import id_lower_bound
from shared.job import utcnow
from shared.logs import JsonFormatter
from shared.store.memory import MemoryJobStore
from tests.shared.store.test_jobs import make_job


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_tracer(provider.get_tracer("test"))
    try:
        yield exporter
    finally:
        tracing.reset()
        provider.shutdown()


def stub_broker() -> StubBroker:
    broker = StubBroker()
    broker.declare_queue("default")
    return broker


def sent(broker: StubBroker) -> list[Message[object]]:
    return [Message.decode(data) for data in list(broker.queues["default"].queue)]


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    assert span.context is not None
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


def test_off_nothing_is_traced_and_the_rows_traceparent_passes_through() -> None:
    # Given tracing off (no OTEL endpoint) and a job a traced process submitted
    assert not tracing.configure_tracing("test", {"OTEL_SERVICE_NAME": "x"})
    assert not tracing.enabled()
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    job = make_job()
    job.traceparent = parent
    # Then its message carries the row's traceparent, and nothing here has a span
    assert message_for(job).options[tracing.TRACEPARENT] == parent
    assert tracing.traceparent() is None and tracing.current_ids() is None
    with tracing.span("anything") as inside:
        assert inside is None
    assert tracing.start("anything") is None
    # And a job of an untraced submission has no traceparent option and no trace id
    assert tracing.TRACEPARENT not in message_for(make_job()).options
    assert make_job().to_api()["trace_id"] is None
    assert job.to_api()["trace_id"] == "0af7651916cd43dd8448eb211c80319c"


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
    ],
)
def test_the_standard_variables_switch_it_on(environ: dict[str, str], wanted: bool) -> None:
    assert tracing.wanted(environ) is wanted


def test_a_published_message_carries_a_producer_span_of_the_jobs_trace(spans: InMemorySpanExporter) -> None:
    # Given a job submitted inside a request's span
    with tracing.span("POST /v1/jobs", kind="server"):
        job = make_job()
        job.traceparent = tracing.traceparent()
    broker = stub_broker()
    # When it is published (as the API's publisher thread does, outside the request's span)
    assert publish(broker, [job]) == [job.id]
    # Then a producer span, the request's child, carries the messaging attributes
    request = next(span for span in spans.get_finished_spans() if span.name == "POST /v1/jobs")
    producer = next(span for span in spans.get_finished_spans() if span.kind is SpanKind.PRODUCER)
    assert producer.name == "publish default"
    assert producer.parent is not None and request.context is not None
    assert producer.parent.span_id == request.context.span_id
    assert hex_ids(producer)[0] == hex_ids(request)[0]
    attributes = dict(producer.attributes or {})
    assert attributes["messaging.system"] == "redis"
    assert attributes["messaging.operation.name"] == "publish"
    assert attributes["messaging.destination.name"] == "default"
    assert attributes["messaging.message.id"] == job.id
    assert attributes["jobrelay.task"] == job.task
    # No argument value reaches a span
    assert not any(str(value) in map(str, attributes.values()) for value in job.args.values())
    # And the message's traceparent names the producer span, so the worker's span is its child
    trace_id, span_id = hex_ids(producer)
    [message] = sent(broker)
    assert message.options[tracing.TRACEPARENT].startswith(f"00-{trace_id}-{span_id}-")
    assert job.to_api()["trace_id"] == trace_id


def test_the_outbox_relay_publishes_into_the_jobs_own_trace(spans: InMemorySpanExporter) -> None:
    # Given an outbox entry the API left behind (Redis was away), its job traced by its request
    clock = FakeClock(utcnow().replace(microsecond=500))
    store, broker = MemoryJobStore(clock), stub_broker()
    with tracing.span("POST /v1/jobs", kind="server"):
        job = make_job()
        job.traceparent = tracing.traceparent()
    store.insert([job], outbox_id=id_lower_bound(clock.now()))
    # When the relay sends it, in a tick of the scheduler with no span of its own
    clock.advance(3)
    assert relay(store, broker, grace_s=2, clock=clock) == 1
    # Then its publish span is a child of the request's span, in the request's trace
    request = next(span for span in spans.get_finished_spans() if span.name == "POST /v1/jobs")
    producer = next(span for span in spans.get_finished_spans() if span.kind is SpanKind.PRODUCER)
    assert producer.parent is not None and request.context is not None
    assert producer.parent.span_id == request.context.span_id
    [message] = sent(broker)
    assert tracing.trace_id_of(message.options[tracing.TRACEPARENT]) == hex_ids(request)[0]


def test_a_failed_publish_is_an_error_on_its_span(spans: InMemorySpanExporter) -> None:
    class Away(StubBroker):
        def enqueue(self, message: Message[object], *, delay: int | None = None) -> Message[object]:
            raise redis.ConnectionError("Redis is away")

    broker = Away()
    broker.declare_queue("default")
    with pytest.raises(Exception, match="Redis"):
        publish(broker, [make_job()])
    [producer] = spans.get_finished_spans()
    assert not producer.status.is_ok
    assert dict(producer.attributes or {})["error.type"] == "ConnectionError"


def test_log_lines_inside_a_span_carry_its_ids(spans: InMemorySpanExporter) -> None:
    formatter = JsonFormatter("test")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "outside", None, None)
    assert "trace_id" not in json.loads(formatter.format(record))
    with tracing.span("run") as current:
        line = json.loads(formatter.format(record))
    trace_id, span_id = f"{current.get_span_context().trace_id:032x}", f"{current.get_span_context().span_id:016x}"
    assert (line["trace_id"], line["span_id"]) == (trace_id, span_id)


def test_a_retry_links_to_the_attempt_before(spans: InMemorySpanExporter) -> None:
    # Given the first attempt's span, whose traceparent a retry's message carries
    first = tracing.start("process default", kind="consumer")
    previous = tracing.traceparent_of(first)
    tracing.finish(first)
    # When the next attempt starts its span from that message
    second = tracing.start("process default", kind="consumer", links=[previous, None])
    tracing.finish(second)
    # Then it links to the first
    done = spans.get_finished_spans()
    assert done[1].links[0].context.span_id == done[0].context.span_id  # type: ignore[union-attr]


def test_a_scheduled_fire_starts_a_trace_of_its_own(spans: InMemorySpanExporter) -> None:
    with tracing.span("POST /v1/schedules", kind="server"):
        with tracing.span("fire nightly", new_trace=True, attributes={"jobrelay.schedule_id": "nightly"}):
            fired = tracing.traceparent()
        outer = tracing.traceparent()
    assert tracing.trace_id_of(fired) != tracing.trace_id_of(outer)
    fire = next(span for span in spans.get_finished_spans() if span.name == "fire nightly")
    assert fire.parent is None


class FakeInstrumentor:
    """Stands in for an OpenTelemetry instrumentor: records that it was switched on."""

    switched_on: ClassVar[list[str]] = []
    is_instrumented_by_opentelemetry = False

    def instrument(self) -> None:
        self.switched_on.append("fake")


def test_instrumentations_are_switched_on_when_installed_unless_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    here = (__name__, "FakeInstrumentor")
    monkeypatch.setattr(
        tracing, "INSTRUMENTATIONS", {"fake": here, "other": here, "absent": ("no.such.module", "Instrumentor")}
    )
    FakeInstrumentor.switched_on.clear()
    # A name in OTEL_PYTHON_DISABLED_INSTRUMENTATIONS is left off; one whose package is missing is skipped
    tracing._instrument_libraries({"other"})
    assert FakeInstrumentor.switched_on == ["fake"]
