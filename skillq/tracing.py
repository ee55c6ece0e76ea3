"""OpenTelemetry tracing: one trace per job, from the HTTP request to the worker's attempts.

Off by default (`[telemetry] exporter = "none"`): no tracer provider exists and every helper
here returns at its first line, so the submit path pays one attribute check. With
`exporter = "otlp"` each process (API, worker) gets its own provider exporting over OTLP/HTTP.

The provider is ours, not OpenTelemetry's global one: the global can be set only once per
process, and a test (or an embedding application) must be able to swap it. The W3C
`traceparent` travels in a job's message options (`TRACEPARENT_OPTION`), so the worker's
attempt spans join the trace the submission started.
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from skillq.settings import TelemetrySettings

#: Message option holding the W3C trace context of the enqueue that sent it.
TRACEPARENT_OPTION = "traceparent"
TRACER_NAME = "skillq"

_W3C = TraceContextTextMapPropagator()
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None


class TelemetryUnavailable(RuntimeError):
    """The settings ask for an exporter whose package is not installed."""


def install(provider: TracerProvider | None) -> None:
    """Make `provider` the one skillq's spans go to; None turns tracing off."""
    global _provider, _tracer
    _provider = provider
    _tracer = None if provider is None else provider.get_tracer(TRACER_NAME)


def enabled() -> bool:
    return _tracer is not None


def configure_tracing(settings: TelemetrySettings, *, service_name: str) -> TracerProvider | None:
    """Set up this process's provider from `[telemetry]`; None (and nothing set up) when off.

    The OTLP exporter is an optional extra, imported only here, so a deployment without
    telemetry installs none of it.
    """
    if settings.exporter == "none":
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as error:
        raise TelemetryUnavailable(
            "telemetry.exporter = 'otlp' needs the OTLP exporter: pip install 'skillq[telemetry]'"
        ) from error
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    endpoint = settings.otlp_endpoint.rstrip("/") + "/v1/traces"
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    install(provider)
    return provider


def flush() -> None:
    """Export what is buffered: a forked worker process leaves through `os._exit`, which
    skips the provider's own exit hook."""
    if _provider is not None:
        _provider.force_flush()


def w3c_trace_id(value: Any) -> int | None:
    """A client's `trace_id` as a W3C trace id, if it is one (32 hex digits, not all zero)."""
    if not isinstance(value, str) or not _TRACE_ID.fullmatch(value.lower()):
        return None
    return int(value, 16) or None


def format_trace_id(trace_id: int) -> str:
    return trace.format_trace_id(trace_id)


def in_trace(trace_id: int | None) -> otel_context.Context | None:
    """The context a span of trace `trace_id` starts in: the current one when it is already
    in that trace, else a remote parent in it (so a job's spans share its trace id even when
    the caller's own trace is another one). None: the current context."""
    if trace_id is None:
        return None
    current = trace.get_current_span().get_span_context()
    if current.is_valid and current.trace_id == trace_id:
        return None
    parent = trace.SpanContext(
        trace_id=trace_id,
        span_id=random.getrandbits(64) or 1,
        is_remote=True,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(parent))


@contextlib.contextmanager
def span(
    name: str,
    *,
    join: Any = None,
    context: otel_context.Context | None = None,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[trace.Span | None]:
    """A span around the block, current inside it; yields None (and costs nothing) when off.

    `join`: a job's (or client's) trace id; when it is a W3C one, the span is in that trace.
    """
    tracer = _tracer
    if tracer is None:
        yield None
        return
    if context is None and join is not None:
        context = in_trace(w3c_trace_id(join))
    with tracer.start_as_current_span(
        name, context=context, kind=kind, attributes=attributes
    ) as current:
        yield current


def start_span(
    name: str,
    *,
    context: otel_context.Context | None = None,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
) -> trace.Span | None:
    """A span the caller ends (and makes current with `activate`); None when off."""
    tracer = _tracer
    if tracer is None:
        return None
    return tracer.start_span(name, context=context, kind=kind, attributes=attributes)


def activate(current: trace.Span) -> object:
    """Make `current` the current span; pass the token to `deactivate`."""
    return otel_context.attach(trace.set_span_in_context(current))


def deactivate(token: object) -> None:
    otel_context.detach(token)  # type: ignore[arg-type]


def current_trace_id() -> int | None:
    span_context = trace.get_current_span().get_span_context()
    return span_context.trace_id if span_context.is_valid else None


def inject() -> dict[str, str]:
    """The current context as W3C headers (`traceparent`, maybe `tracestate`)."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier


def extract(carrier: Mapping[str, str]) -> otel_context.Context | None:
    """The context a W3C `traceparent` names; None when there is none (or it is malformed,
    which the W3C rules say to ignore)."""
    if TRACEPARENT_OPTION not in carrier:
        return None
    extracted = _W3C.extract(carrier)
    return extracted if trace.get_current_span(extracted).get_span_context().is_valid else None
