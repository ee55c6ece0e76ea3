"""The JSON-RPC envelope check every transport runs before the SDK sees a message.

SDK 2.3.0 validates an incoming message with one pydantic union: on HTTP an invalid request
(no `jsonrpc`, a numeric `method`, a batch) is answered -32602 with the whole validation
dump, legacy SSE answers a bare 400 "Could not parse message", stdio drops the line, and a
request with `"id": null` passes as a notification (202 and silence). JSON-RPC 2.0 wants
-32600 Invalid Request for all of them, and MCP forbids a null id and (since 2025-06-18)
batches. `invalid_request` answers each with -32600, a short message, and the request's id
when it had a usable one.
"""

from __future__ import annotations

from typing import Any

import mcp_types as types

#: JSON-RPC error code of a body that is not JSON.
PARSE_ERROR = types.PARSE_ERROR
INVALID_REQUEST = types.INVALID_REQUEST


def _usable_id(message: dict[str, Any]) -> str | int | None:
    request_id = message.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, str | int):
        return None
    return request_id


def problem(decoded: Any) -> str | None:
    """Why `decoded` (a parsed JSON body or line) is not one valid JSON-RPC message, or None."""
    if isinstance(decoded, list):
        if not decoded:
            return "an empty batch is not a request"
        return "batches are not supported (MCP removed JSON-RPC batching in 2025-06-18)"
    if not isinstance(decoded, dict):
        return "a JSON-RPC message must be an object"
    if decoded.get("jsonrpc") != "2.0":
        return 'the message must carry "jsonrpc": "2.0"'
    if "id" in decoded:
        request_id = decoded["id"]
        if request_id is None:
            return "the id must be a string or an integer, not null"
        if isinstance(request_id, bool) or not isinstance(request_id, str | int):
            return "the id must be a string or an integer"
    if "method" in decoded:
        if not isinstance(decoded["method"], str) or not decoded["method"]:
            return "the method must be a non-empty string"
        if "params" in decoded and not isinstance(decoded["params"], dict):
            return "params must be an object"
        return None
    if "id" not in decoded:
        return "the message has neither a method nor an id"
    if ("result" in decoded) == ("error" in decoded):
        return "a response must carry exactly one of result and error"
    return None


def invalid_request(decoded: Any) -> dict[str, Any] | None:
    """The -32600 answer (wire form) for a message `problem` refuses, else None."""
    reason = problem(decoded)
    if reason is None:
        return None
    request_id = _usable_id(decoded) if isinstance(decoded, dict) else None
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "error": {"code": INVALID_REQUEST, "message": f"Invalid Request: {reason}"},
    }


def parse_error() -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": None, "error": {"code": PARSE_ERROR, "message": "Parse error"}}
