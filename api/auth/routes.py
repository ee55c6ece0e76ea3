"""`GET /api/v1/auth/whoami`: the principal the server sees, to debug credentials."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from skillq.api.auth.access import principal_of


async def whoami(request: Request) -> JSONResponse:
    principal = principal_of(request)
    return JSONResponse(
        {
            "subject": principal.subject,
            "roles": sorted(principal.roles),
            "method": principal.method,
            "admin": principal.is_admin,
            "can_submit": principal.can_submit,
        }
    )


routes = [Route("/api/v1/auth/whoami", whoami, methods=["GET"])]
