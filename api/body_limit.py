"""Refuses request bodies over a size limit with 413, before the endpoint reads them.

Pure ASGI rather than `BaseHTTPMiddleware`, which is known to break streaming responses.

Why not Starlette's own (`Starlette(max_body_size=...)`, `starlette.middleware.body_limit`,
1.10): it answers `text/plain` "Content Too Large" whenever the request declares a
`Content-Length` past the limit, even when the endpoint's error handler has built an answer
(it replaces that answer at `http.response.start`), so a client would get a 413 outside the
error envelope. Checked with starlette 1.10.0 on a route that reads the body, one that does
not, and an unknown path: all three answered plain text.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from skillq.api.errors import http_error_response


class _TooLarge(Exception):
    pass


class BodySizeLimit:
    """`exempt`: path prefixes whose endpoints enforce their own limit (MCP's max_body_size)."""

    def __init__(self, app: ASGIApp, max_body_size: int, exempt: tuple[str, ...] = ()) -> None:
        self.app = app
        self.max_body_size = max_body_size
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.exempt and scope["path"].startswith(self.exempt)):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_size:
            await self._refuse(scope, receive, send)
            return
        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_size:
                    raise _TooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not response_started:
                await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"request body is larger than {self.max_body_size} bytes"
        await http_error_response(413, message)(scope, receive, send)
