"""Pure ASGI gate in front of the SDK's HTTP message endpoints (`/mcp` POST, `/mcp/message`):
reads the body (at most `max_body_size`), answers what is not one valid JSON-RPC message
with -32600 / -32700 itself (`skillq.api.mcp.envelope`), and hands everything else to the
SDK with the body replayed, so the SDK parses exactly the bytes that were checked.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from skillq.api.mcp.envelope import invalid_request, parse_error


class EnvelopeGate:
    def __init__(self, app: ASGIApp, max_body_size: int) -> None:
        self.app = app
        self.max_body_size = max_body_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before its body arrived
            chunk = message.get("body", b"")
            size += len(chunk)
            chunks.append(chunk)
            more = message.get("more_body", False)
            if size > self.max_body_size:
                break  # the SDK answers 413 from what it is given
        body = b"".join(chunks)
        if not more:
            answer = _refusal(body)
            if answer is not None:
                await _send_json(send, answer)
                return
        await self.app(scope, _replaying(body, more, receive), send)


def _refusal(body: bytes) -> dict | None:
    try:
        decoded = json.loads(body)
    except (ValueError, RecursionError):
        return parse_error()
    return invalid_request(decoded)


def _replaying(body: bytes, more: bool, receive: Receive) -> Receive:
    """The request's body as one message, then (if any was left unread) the rest of it and
    the client's disconnect as they come."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return replay


async def _send_json(send: Send, answer: dict) -> None:
    body = json.dumps(answer, separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 400, "headers": headers})
    await send({"type": "http.response.body", "body": body})
