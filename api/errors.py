"""REST's errors: the status of each core error, and the one envelope for every failure,
`{"error": {"code", "message", "details"}}`.

Routes raise (core errors, or Starlette's `HTTPException`); the app's exception handlers
below turn whatever was raised into a response, so a client never sees an HTML page or a
traceback. The authentication middleware answers before any route runs and cannot reach
the handlers, so its `on_error` answers through the same `error_response`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from skillq.errors import (
    Conflict,
    Forbidden,
    IdempotencyKeyReused,
    InvalidParams,
    InvalidRequest,
    NotFound,
    QuotaExceeded,
    ServiceUnavailable,
    SkillqError,
    TooManyRequests,
    Unauthorized,
    UnknownJobType,
    row_of,
)

logger = logging.getLogger(__name__)

#: The HTTP status of each core error: one row per class of `skillq.errors`.
HTTP_STATUS: dict[type[SkillqError], int] = {
    SkillqError: 500,
    InvalidRequest: 400,
    InvalidParams: 422,
    UnknownJobType: 422,
    NotFound: 404,
    Conflict: 409,
    Unauthorized: 401,
    IdempotencyKeyReused: 409,
    Forbidden: 403,
    TooManyRequests: 429,
    QuotaExceeded: 429,
    ServiceUnavailable: 503,
}

#: The least a 401 says (RFC 7235); `skillq.api.protected_resource` adds where to get a token.
CHALLENGE = 'Bearer realm="skillq"'

#: Codes for the HTTP errors Starlette raises itself (routing, a body it cannot read).
_HTTP_CODES = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


def _envelope(
    status_code: int,
    code: str,
    message: str,
    details: Any = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details}}
    return JSONResponse(body, status_code=status_code, headers=dict(headers or {}))


def error_response(error: SkillqError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """A core error as REST answers it. `headers` add to (or refine) the defaults: every
    401 names the scheme the client should use (RFC 7235), every refused quota when to try
    again (`Retry-After`, RFC 9110)."""
    defaults = {"WWW-Authenticate": CHALLENGE} if isinstance(error, Unauthorized) else {}
    if isinstance(error, QuotaExceeded):
        defaults["Retry-After"] = str(error.retry_after)
    status_code = row_of(HTTP_STATUS, error)
    return _envelope(
        status_code, error.code, error.message, error.details, {**defaults, **(headers or {})}
    )


async def skillq_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SkillqError)
    # A 401, or a 403 for a missing role, points at how to get a token (RFC 6750 / 9728).
    resource = getattr(request.app.state, "protected_resource", None)
    return error_response(exc, resource.challenge_for(request, exc) if resource else None)


def http_error_response(
    status_code: int, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """A refusal at the HTTP level (routing, a body too large), in the same envelope: for
    Starlette's own errors and for middleware that answers before any route runs."""
    code = _HTTP_CODES.get(status_code, "http_error")
    return _envelope(status_code, code, message, headers=headers)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return http_error_response(exc.status_code, str(exc.detail), exc.headers)


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("Unhandled error on %s %s", request.method, request.url.path)
    return error_response(SkillqError("internal server error"))


EXCEPTION_HANDLERS = {
    SkillqError: skillq_error,
    HTTPException: http_error,
    Exception: unexpected_error,
}
