"""Assembles the Starlette app explicitly from settings: routes, middleware, handlers."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware

from api import jobs, probes
from api.body_limit import BodySizeLimit
from api.errors import EXCEPTION_HANDLERS
from skillq.jobs import JobCoordinator


def create_app() -> Starlette:
    """The API process's app, on the broker and store that `actors` configured.

    Importing `actors` here (not at module level) keeps `api` importable without side
    effects; it is the same configuration step the worker performs.
    """
    import actors

    app = Starlette(
        routes=[*probes.routes, *jobs.routes],
        middleware=[Middleware(BodySizeLimit, max_body_size=actors.settings.server.max_body_size)],
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.state.settings = actors.settings
    app.state.coordinator = JobCoordinator(actors.broker, actors.settings)
    return app
