"""Probes, never behind auth: `/health` and `/ready` (can we serve?), `/live` (is the process
up?), `/version` (what runs here?).

`/live` touches nothing, so a slow database never gets a healthy process restarted;
`/ready` asks the store and the broker, so a load balancer stops sending traffic to an API
that cannot submit jobs. `/health` also says which sandbox skill tools get on this machine
(`skills.sandbox`, whether bwrap works here): the workers on this host get the same; each
worker also logs its own at start.

Probes run their blocking checks on threads of their own (`PROBE_THREADS`, beside the
requests' share of the store's pool), so a flood of slow job requests never makes a healthy
process look dead. They are never checked for Host/Origin: load balancers call them by
address.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sqlite3
from collections.abc import Callable
from typing import Any

import anyio.to_thread
import dramatiq
import peewee
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from skillq.engine import bubblewrap
from skillq.settings import Settings
from skillq.storage.database import connection
from skillq.storage.migrations import schema_status
from skillq.storage.models import Job

#: Seconds a readiness check waits for the broker.
BROKER_TIMEOUT_SECS = 2.0
#: Threads (and store connections) reserved for the probes.
PROBE_THREADS = 2
#: Paths answered whatever Host or Origin a request names.
UNCHECKED_PATHS = ("/health", "/ready", "/live")


async def _on_probe_thread(request: Request, function: Callable[..., Any], *args: Any) -> Any:
    limiter = request.app.state.probe_limiter
    return await anyio.to_thread.run_sync(function, *args, limiter=limiter)


def _store_answers() -> bool:
    try:
        with connection():
            Job.select(Job.id).limit(1).execute()
    except peewee.PeeweeException:
        return False
    return True


def _broker_answers(broker: dramatiq.Broker, settings: Settings) -> bool:
    """One cheap round trip with the broker's own protocol, bounded by BROKER_TIMEOUT_SECS."""
    backend = settings.broker.backend
    try:
        if backend == "redis":
            return bool(broker.client.ping())
        if backend == "rabbitmq":
            import pika

            parameters = pika.URLParameters(settings.broker.url or "")
            parameters.socket_timeout = BROKER_TIMEOUT_SECS
            parameters.blocked_connection_timeout = BROKER_TIMEOUT_SECS
            parameters.connection_attempts = 1
            pika.BlockingConnection(parameters).close()
            return True
        uri = f"file:{settings.broker.path}?mode=ro"
        with sqlite3.connect(uri, uri=True, timeout=BROKER_TIMEOUT_SECS) as conn:
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        return True
    except Exception:
        return False


async def health(request: Request) -> JSONResponse:
    settings = request.app.state.settings
    store_ok = await _on_probe_thread(request, _store_answers)
    # The first call runs bwrap once (cached afterwards): off the event loop.
    sandbox = await _on_probe_thread(request, bubblewrap.status, settings.skills.sandbox)
    body = {
        "status": "ok" if store_ok else "unavailable",
        "broker": settings.broker.backend,
        "store": settings.storage.backend,
        "sandbox": sandbox.to_dict(),
    }
    return JSONResponse(body, status_code=200 if store_ok else 503)


async def live(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> JSONResponse:
    settings = request.app.state.settings
    broker = request.app.state.coordinator.broker
    store_ok = await _on_probe_thread(request, _store_answers)
    broker_ok = await _on_probe_thread(request, _broker_answers, broker, settings)
    ok = store_ok and broker_ok
    body = {
        "status": "ok" if ok else "unavailable",
        "store": {"backend": settings.storage.backend, "ok": store_ok},
        "broker": {"backend": settings.broker.backend, "ok": broker_ok},
    }
    return JSONResponse(body, status_code=200 if ok else 503)


def _schema_version() -> int | None:
    try:
        with connection():
            return schema_status().current
    except peewee.PeeweeException:
        return None


async def version(request: Request) -> JSONResponse:
    settings = request.app.state.settings
    return JSONResponse(
        {
            "version": importlib.metadata.version("skillq"),
            "python": platform.python_version(),
            "dramatiq": importlib.metadata.version("dramatiq"),
            "schema_version": await _on_probe_thread(request, _schema_version),
            "broker": settings.broker.backend,
            "store": settings.storage.backend,
            "auth": settings.auth.mode,
        }
    )


routes = [
    Route("/health", health, methods=["GET"]),
    Route("/live", live, methods=["GET"]),
    Route("/ready", ready, methods=["GET"]),
    Route("/version", version, methods=["GET"]),
]
