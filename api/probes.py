"""Health probe: is the job store answering? Never behind auth."""

from __future__ import annotations

import peewee
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from storage.database import connection
from storage.models import Job


def _store_answers() -> bool:
    try:
        with connection():
            Job.select(Job.id).limit(1).execute()
    except peewee.PeeweeException:
        return False
    return True


async def health(request: Request) -> JSONResponse:
    settings = request.app.state.settings
    store_ok = await run_in_threadpool(_store_answers)
    body = {
        "status": "ok" if store_ok else "unavailable",
        "broker": settings.broker.backend,
        "store": settings.storage.backend,
    }
    return JSONResponse(body, status_code=200 if store_ok else 503)


routes = [Route("/health", health, methods=["GET"])]
