"""OpenTelemetry tracing: one trace per job, from the HTTP request (or a schedule's fire) to the worker's finish.

Configured only by the standard ``OTEL_*`` variables (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_SERVICE_NAME``, ``OTEL_TRACES_SAMPLER``/``_ARG``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_SDK_DISABLED``, ``OTEL_BSP_*``), read by the OpenTelemetry SDK itself. Without an
endpoint tracing is off: nothing of OpenTelemetry is imported (the packages are the optional
``tracing`` extra) and every function here returns at its first line.

The W3C ``traceparent`` of the span a job was submitted in is kept on the job's row and rides
in its Dramatiq message's options, so the outbox relay, a workflow step released later and a
retry all publish into the job's trace, and the worker's spans join it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

log = logging.getLogger(__name__)

#: The message option that carries the W3C trace context of the span that published it.
TRACEPARENT = "traceparent"
#: The message option that carries the previous attempt's ``process`` span (a retry links to it).
PREVIOUS_ATTEMPT = "trace_previous_attempt"
#: ``messaging.system``: the broker the messages travel through.
MESSAGING_SYSTEM = "redis"

#: The SDK's tracer when tracing is on; None when off (the fast path).
_tracer: Any = None
_NULL: AbstractContextManager[None] = nullcontext()
#: Libraries whose OpenTelemetry instrumentation is switched on when installed (module, class).
#: ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` (comma-separated names, as the auto-instrumentation reads it)
#: leaves out the ones named there.
INSTRUMENTATIONS = {
    "redis": ("opentelemetry.instrumentation.redis", "RedisInstrumentor"),
    "sqlalchemy": ("opentelemetry.instrumentation.sqlalchemy", "SQLAlchemyInstrumentor"),
    "urllib": ("opentelemetry.instrumentation.urllib", "URLLibInstrumentor"),
    "requests": ("opentelemetry.instrumentation.requests", "RequestsInstrumentor"),
    "httpx": ("opentelemetry.instrumentation.httpx", "HTTPXClientInstrumentor"),
}


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether the ``OTEL_*`` variables ask for traces: an OTLP endpoint set, the SDK not disabled."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def configure_tracing(service: str, environ: Mapping[str, str] | None = None) -> bool:
    """Switch tracing on for this process if the ``OTEL_*`` variables ask for it; True if on.

    Called once at process start by each service's entry point, never by an import.
    ``service`` names the resource when ``OTEL_SERVICE_NAME`` does not.
    """
    global _tracer
    environ = os.environ if environ is None else environ
    if not wanted(environ):
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise RuntimeError(
            f"OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed ({exc}); "
            "install jobrelay[tracing] or unset it"
        ) from exc
    attributes = {} if environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: f"jobrelay-{service}"}
    # NOTE: the SDK reads OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER(_ARG), the
    # exporter's endpoint and headers and OTEL_BSP_* itself; the batch processor re-arms after a fork.
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.sampler = _own_roots(provider.sampler)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    disabled = {name.strip() for name in environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",")}
    _instrument_libraries(disabled)
    _tracer = provider.get_tracer("jobrelay")
    log.info("tracing on: spans exported over OTLP/HTTP")
    return True


def _own_roots(configured: Any) -> Any:
    """The configured sampler, except that a library's call outside any trace starts none.

    NOTE: the worker polls Redis and writes heartbeats, the relay queries the store, all the time;
    with the redis and SQLAlchemy instrumentations on, each call would be a trace of its own. A
    client span with no parent is dropped; inside a job's or request's span it is kept.
    """
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
    from opentelemetry.trace import SpanKind, get_current_span

    class OwnRoots(Sampler):
        def should_sample(
            self, parent_context, trace_id, name, kind=None, attributes=None, links=None, trace_state=None
        ):
            if kind == SpanKind.CLIENT and not get_current_span(parent_context).get_span_context().is_valid:
                return SamplingResult(Decision.DROP)
            return configured.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

        def get_description(self) -> str:
            return f"OwnRoots({configured.get_description()})"

    return OwnRoots()


def _instrument_libraries(disabled: set[str]) -> None:
    """Switch on the instrumentation of every library in ``INSTRUMENTATIONS`` that is installed and not disabled."""
    import importlib

    for name, (module_name, class_name) in INSTRUMENTATIONS.items():
        if name in disabled:
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        instrumentor = getattr(module, class_name)()
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument()


def flush(timeout_ms: int = 5000) -> None:
    """Export the spans still queued (a process about to end without its exit hooks)."""
    if _tracer is None:
        return
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    force_flush = getattr(provider, "force_flush", None)
    if force_flush is not None:
        force_flush(timeout_ms)


def enabled() -> bool:
    return _tracer is not None


def reset() -> None:
    """Tracing off again (tests that switched it on in-process)."""
    global _tracer
    _tracer = None


def use_tracer(tracer: Any) -> None:
    """Trace with ``tracer`` (a unit test's, exporting to memory)."""
    global _tracer
    _tracer = tracer


def span(
    name: str,
    *,
    kind: str = "internal",
    attributes: Mapping[str, Any] | None = None,
    parent: str | None = None,
    new_trace: bool = False,
    expected: tuple[type[BaseException], ...] = (),
) -> AbstractContextManager[Any]:
    """A span around a block, the current span's child (or ``parent``'s, a traceparent; or a new
    trace's root); the block's exception is recorded on it unless ``expected`` (control flow, as
    Dramatiq's ``SkipMessage``). A no-op when tracing is off."""
    if _tracer is None:
        return _NULL
    return _span(name, kind, attributes, parent, new_trace, expected)


@contextmanager
def _span(
    name: str,
    kind: str,
    attributes: Mapping[str, Any] | None,
    parent: str | None,
    new_trace: bool,
    expected: tuple[type[BaseException], ...],
) -> Iterator[Any]:
    with _tracer.start_as_current_span(
        name,
        context=_context(parent, new_trace),
        kind=_kind(kind),
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        try:
            yield current
        except BaseException as exc:
            if not isinstance(exc, expected):
                record_error(current, exc)
            raise


def start(
    name: str,
    *,
    kind: str = "internal",
    attributes: Mapping[str, Any] | None = None,
    parent: str | None = None,
    links: Sequence[str | None] = (),
    current: bool = True,
) -> Any:
    """Start a span that outlives one block (a message's hooks); end it with ``finish``. None when off.

    ``links``: traceparents of related spans (a retry's previous attempt). ``current``: make it the
    current span of this thread until ``finish``.
    """
    if _tracer is None:
        return None
    from opentelemetry import context, trace

    link_objects = [trace.Link(_span_context(value)) for value in links if value and _span_context(value).is_valid]
    opened = _tracer.start_span(
        name, context=_context(parent, False), kind=_kind(kind), attributes=attributes, links=link_objects
    )
    token = context.attach(trace.set_span_in_context(opened)) if current else None
    return (opened, token)


def finish(started: Any, error: BaseException | None = None) -> None:
    """End a span from ``start`` (recording ``error``) and restore the thread's previous current span."""
    if started is None:
        return
    from opentelemetry import context

    opened, token = started
    if error is not None:
        record_error(opened, error)
    opened.end()
    if token is not None:
        context.detach(token)


def annotate(attributes: Mapping[str, Any]) -> None:
    """Set ``attributes`` on this thread's current span (learnt after it started: a claimed job's attempt)."""
    if _tracer is None:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes(attributes)


def record_error(target: Any, error: BaseException) -> None:
    """The error's type and message on ``target`` (a span), and its status set to error."""
    if target is None:
        return
    from opentelemetry.trace import Status, StatusCode

    target.record_exception(error)
    target.set_attribute("error.type", type(error).__qualname__)
    target.set_status(Status(StatusCode.ERROR, type(error).__qualname__))


def traceparent_of(target: Any) -> str | None:
    """The W3C traceparent of a span from ``start`` or ``span``; None when off or not sampled-valid."""
    if target is None:
        return None
    opened = target[0] if isinstance(target, tuple) else target
    return _format(opened.get_span_context())


def traceparent() -> str | None:
    """The W3C traceparent of this thread's current span (None when off or outside any span)."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    return _format(trace.get_current_span().get_span_context())


def current_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) in hex of this thread's current span, for log lines and exemplars."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


def sampled_trace_id() -> str | None:
    """The current trace id when this span is sampled (an exemplar must point at a stored trace)."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    return f"{ctx.trace_id:032x}" if ctx.is_valid and ctx.trace_flags.sampled else None


def trace_id_of(value: str | None) -> str | None:
    """The trace id in a W3C traceparent (``00-<trace id>-<span id>-<flags>``), None if malformed."""
    if not value:
        return None
    parts = value.split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or parts[1] == "0" * 32:
        return None
    return parts[1]


def messaging_attributes(
    operation: str, *, queue: str, job_id: str, task: str, attempt: int | None = None, workflow_id: str | None = None
) -> dict[str, Any]:
    """The OpenTelemetry messaging semantic conventions' attributes, and jobrelay's own, of a message's span.

    NOTE: never the job's arguments or any token: they may hold secrets, and spans leave the cluster.
    """
    attributes: dict[str, Any] = {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.operation.name": operation,
        "messaging.operation.type": operation,
        "messaging.destination.name": queue,
        "messaging.message.id": job_id,
        "jobrelay.task": task,
    }
    if attempt is not None:
        attributes["jobrelay.attempt"] = attempt
    if workflow_id:
        attributes["jobrelay.workflow_id"] = workflow_id
    return attributes


def _kind(name: str) -> Any:
    from opentelemetry.trace import SpanKind

    return SpanKind[name.upper()]


def _context(parent: str | None, new_trace: bool) -> Any:
    from opentelemetry import context, trace

    if new_trace:
        return context.Context()
    if parent is None:
        return None
    span_context = _span_context(parent)
    if not span_context.is_valid:
        return None
    return trace.set_span_in_context(trace.NonRecordingSpan(span_context), context.Context())


def _span_context(value: str) -> Any:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    extracted = TraceContextTextMapPropagator().extract({"traceparent": value})
    return trace.get_current_span(extracted).get_span_context()


def _format(ctx: Any) -> str | None:
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
