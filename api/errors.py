"""The one error envelope, `{"error": {"code", "message", "details"}}`, for every failure.

Routing errors (404, 405), skillq's own errors and anything unexpected all leave through
here, so a client never sees an HTML page or a traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from skillq.errors import SkillqError, Unauthorized

logger = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


def error_response(status_code: int, code: str, message: str, details: Any = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details}}
    return JSONResponse(body, status_code=status_code)


async def skillq_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SkillqError)
    response = error_response(exc.status_code, exc.code, exc.message, exc.details)
    if isinstance(exc, Unauthorized):
        # RFC 7235: a 401 names the scheme the client should use.
        response.headers["WWW-Authenticate"] = 'Bearer realm="skillq"'
    return response


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    response = error_response(exc.status_code, code, str(exc.detail))
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("Unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal server error")


EXCEPTION_HANDLERS = {
    SkillqError: skillq_error,
    HTTPException: http_error,
    Exception: unexpected_error,
}
