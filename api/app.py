"""Assembles the Starlette app explicitly from settings: routes, middleware, handlers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware

from skillq.api import (
    collections,
    dashboard,
    job_types,
    jobs,
    logs,
    metrics,
    openapi,
    probes,
    remote_workers,
    stats,
    stream,
    webhooks,
    workers,
    workflows,
)
from skillq.api.auth import build_auth_backend, on_auth_error
from skillq.api.auth import routes as auth_routes
from skillq.api.body_limit import BodySizeLimit
from skillq.api.errors import EXCEPTION_HANDLERS
from skillq.api.mcp import McpEndpoints
from skillq.api.protected_resource import ProtectedResource
from skillq.api.tracing import RequestTracing
from skillq.api.trusted_origins import TrustedOrigins, allowed_names
from skillq.jobs.coordinator import JobCoordinator
from skillq.jobs.remote_fetch import RemoteFetch
from skillq.settings import Settings


def create_app(settings: Settings | None = None) -> Starlette:
    """The API process's app, on the broker and store that `actors` configured.

    Importing `actors` here (not at module level) keeps `api` importable without side
    effects; it is the same configuration step the worker performs. `settings` defaults to
    those `actors` loaded; tests pass variants (e.g. another auth mode) on the same store.
    """
    from skillq import actors

    settings = settings or actors.settings
    coordinator = JobCoordinator(actors.broker, settings)
    resource = ProtectedResource(settings)
    mcp = McpEndpoints(coordinator, settings, resource) if settings.mcp.enabled else None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Every blocking call of a request (store reads, submits, MCP tools) runs on the
        # default thread limiter; sized below the store's pool, it never waits for a
        # connection, and the probes keep connections and threads of their own.
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = request_threads(settings)
        async with contextlib.AsyncExitStack() as stack:
            if mcp is not None:
                await stack.enter_async_context(mcp.running())
            yield

    routes = [
        *probes.routes,
        *metrics.routes,
        *openapi.routes,
        *auth_routes.routes,
        *resource.routes(),
        *jobs.routes,
        *workflows.routes,
        *stream.routes,
        *logs.routes,
        *webhooks.routes,
        *stats.routes,
        *workers.routes,
        *remote_workers.routes,
        *job_types.routes,
        *collections.routes,
        *dashboard.routes,
        *(mcp.routes() if mcp else []),
    ]
    request_metrics = metrics.Metrics(settings.workers.dead_after_secs)
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(RequestTracing, routes=routes),
            Middleware(
                TrustedOrigins,
                names=allowed_names(settings),
                exempt=probes.UNCHECKED_PATHS,
                exempt_prefixes=mcp.paths if mcp else (),
            ),
            Middleware(
                BodySizeLimit,
                max_body_size=settings.server.max_body_size,
                exempt=mcp.paths if mcp else (),
            ),
            Middleware(metrics.RequestMetrics, metrics=request_metrics, routes=routes),
            Middleware(
                AuthenticationMiddleware,
                backend=build_auth_backend(settings, resource),
                on_error=on_auth_error,
            ),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.coordinator = coordinator
    app.state.protected_resource = resource
    app.state.remote_fetch = RemoteFetch(actors.broker, settings)
    app.state.fetch_limiter = anyio.CapacityLimiter(remote_workers.FETCH_THREADS)
    app.state.worker_tokens = {}
    app.state.metrics = request_metrics
    app.state.probe_limiter = anyio.CapacityLimiter(probes.PROBE_THREADS)
    app.state.streams = stream.OpenStreams(settings.server.max_streams_per_principal)
    return app


def request_threads(settings: Settings) -> int:
    """Threads (and so store connections) requests may use at once: the pool less the
    probes' share, at least one."""
    return max(1, settings.storage.pool_size - probes.PROBE_THREADS)
