"""`GET /metrics`: Prometheus text for this API process and the job store.

    skillq_jobs{type,queue,state}                    jobs in the store now (read at scrape)
    skillq_jobs_completed_total{type}                jobs that completed (every process)
    skillq_jobs_failed_total{type}                   jobs that failed for good
    skillq_jobs_cancelled_total{type}                jobs cancelled, pending or running
    skillq_jobs_retried_total{type}                  attempts started after the first
    skillq_job_run_seconds{type}                     histogram: each attempt's run time
    skillq_job_wait_seconds{type}                    histogram: submission to first start
    skillq_jobs_running                              jobs the live workers run now
    skillq_workers{status}                           registered workers: alive, stopped, dead
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
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from skillq.api.auth.access import require_viewer
from skillq.storage import job_metrics, jobs, workers
from skillq.storage.database import connection

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


_COUNTER_HELP = {
    "completed": "Jobs completed, by type.",
    "failed": "Jobs failed for good (attempts spent, or a failure not retried), by type.",
    "cancelled": "Jobs cancelled, pending or running, by type.",
    "retried": "Attempts started after the first (a failure retried, a lost job rerun), by type.",
    "postponed": "Deliveries postponed by a job type's global limit or its owner's max_running"
    " (not failures), by type.",
}
_HISTOGRAM_HELP = {
    "run_seconds": "Run time of each attempt, by type.",
    "wait_seconds": "Time from submission to the first attempt's start, by type.",
}
_WORKER_STATUSES = ("alive", "stopped", "dead")


class _StoreCollector(Collector):
    """Reads the job store at scrape time (see the module docstring for why the store)."""

    def __init__(self, dead_after_secs: float) -> None:
        self.dead_after_secs = dead_after_secs

    def collect(self) -> Iterator[Metric]:
        with connection():
            by_state = jobs.count_by_type_queue_state()
            counters = job_metrics.counters()
            histograms = job_metrics.histograms()
            registered = workers.list_workers(self.dead_after_secs)
        family = GaugeMetricFamily(
            "skillq_jobs",
            "Jobs in the store by type, queue and state.",
            labels=["type", "queue", "state"],
        )
        for job_type, queue, state, count in by_state:
            family.add_metric([job_type, queue, state], count)
        yield family
        for name, help_text in _COUNTER_HELP.items():
            counter = CounterMetricFamily(f"skillq_jobs_{name}", help_text, labels=["type"])
            for (counted, job_type), total in sorted(counters.items()):
                if counted == name:
                    counter.add_metric([job_type], total)
            yield counter
        for name, help_text in _HISTOGRAM_HELP.items():
            histogram = HistogramMetricFamily(f"skillq_job_{name}", help_text, labels=["type"])
            for (observed, job_type), values in sorted(histograms.items()):
                if observed == name:
                    histogram.add_metric([job_type], values.buckets, values.sum)
            yield histogram
        alive = [w for w in registered if w.status == "alive"]
        yield GaugeMetricFamily(
            "skillq_jobs_running",
            "Jobs the live workers are running now (worker registry).",
            value=sum(len(w.worker.running_jobs) for w in alive),
        )
        status = GaugeMetricFamily(
            "skillq_workers", "Registered worker processes by status.", labels=["status"]
        )
        for name in _WORKER_STATUSES:
            status.add_metric([name], sum(1 for w in registered if w.status == name))
        yield status


class Metrics:
    """This API process's registry: its own HTTP timings and submissions, and the store's
    job metrics read at each scrape.

    Parameters:
      dead_after_secs(float): A worker silent this long is dead (`workers.dead_after_secs`).
    """

    def __init__(self, dead_after_secs: float = 15.0) -> None:
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
        self.registry.register(_StoreCollector(dead_after_secs))

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
