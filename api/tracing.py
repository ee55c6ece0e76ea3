"""A server span per HTTP request, continuing the caller's W3C `traceparent` when it sends one.

Pure ASGI, like `RequestMetrics`, so a streaming response (SSE) passes through untouched; the
span lasts until the response is complete. With tracing off it hands the request straight
on. The span is named by the route's template (`POST /api/v1/jobs`), never the raw path, so
span names stay few; the raw path is an attribute.
"""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from skillq import tracing

#: Request headers the W3C trace context is read from.
_TRACE_HEADERS = {b"traceparent": "traceparent", b"tracestate": "tracestate"}
#: A header value longer than this is no trace context (W3C: traceparent is 55 characters,
#: tracestate at most 32 members); it is ignored rather than parsed.
_MAX_HEADER_BYTES = 1024


class RequestTracing:
    def __init__(self, app: ASGIApp, routes: Iterable[BaseRoute] = ()) -> None:
        self.app = app
        # Keyed by identity: an ASGI-class endpoint need not be hashable.
        self.templates = {
            id(route.endpoint): route.path for route in routes if isinstance(route, Route)
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not tracing.enabled():
            await self.app(scope, receive, send)
            return
        carrier = {}
        for name, value in scope["headers"]:
            key = _TRACE_HEADERS.get(name)
            if key is not None and len(value) <= _MAX_HEADER_BYTES:
                carrier[key] = value.decode("latin-1")
        method = scope["method"]
        attributes = {"http.request.method": method, "url.path": scope["path"]}
        with tracing.span(
            method, context=tracing.extract(carrier), kind=SpanKind.SERVER, attributes=attributes
        ) as span:

            async def observing_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = message["status"]
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            try:
                await self.app(scope, receive, observing_send)
            finally:
                route = self.templates.get(id(scope.get("endpoint")))
                if route is not None:
                    span.set_attribute("http.route", route)
                    span.update_name(f"{method} {route}")
