"""`GET /metrics`: Prometheus text for this API process and the job store.

    skillq_jobs{type,queue,state}                    jobs in the store now (read at scrape)
    skillq_jobs_submitted_total{type}                jobs this process accepted
    skillq_http_request_duration_seconds{method,route,status}
                                                     time to the response's first byte

Latency is measured to the first byte, so an event stream open for minutes still counts as
the quick request it is. Routes are labelled by their template (`/api/v1/jobs/{job_id}`),
never the raw path, to keep the number of series bounded. Each app has its own registry,
so several apps in one process (tests) do not collide.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from skillq.api.auth.access import require_viewer
from skillq.storage import jobs
from skillq.storage.database import connection

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _StoreCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "skillq_jobs",
            "Jobs in the store by type, queue and state.",
            labels=["type", "queue", "state"],
        )
        with connection():
            for job_type, queue, state, count in jobs.count_by_type_queue_state():
                family.add_metric([job_type, queue, state], count)
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.submitted = Counter(
            "skillq_jobs_submitted",
            "Jobs accepted by this API process.",
            ["type"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "skillq_http_request_duration_seconds",
            "Time from request to the response's first byte.",
            ["method", "route", "status"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StoreCollector())

    def job_submitted(self, job_type: str) -> None:
        self.submitted.labels(job_type).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetrics:
    """Pure ASGI (streaming responses pass through untouched): observes each request."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Iterable[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        # Keyed by identity: an ASGI-class endpoint need not be hashable.
        self.templates = {
            id(route.endpoint): route.path for route in routes if isinstance(route, Route)
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def observing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = self.templates.get(id(scope.get("endpoint")), "unmatched")
                self.metrics.latency.labels(scope["method"], route, message["status"]).observe(
                    time.perf_counter() - started
                )
            await send(message)

        await self.app(scope, receive, observing_send)


async def metrics(request: Request) -> Response:
    if request.app.state.settings.auth.protect_metrics:
        require_viewer(request)
    body = await run_in_threadpool(request.app.state.metrics.exposition)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


routes = [Route("/metrics", metrics, methods=["GET"])]
