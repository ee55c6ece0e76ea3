"""Reading a request's JSON body without letting one client stall the others.

The body is already bounded (`server.max_body_size`, 413). Parsing a large one, and walking
it, takes long enough to stall every other request if done on the event loop, so bodies past
`INLINE_PARSE_BYTES` are parsed on a worker thread (the loop keeps serving meanwhile). The
parsed document must then hold at most `server.max_json_nodes` values and
`MAX_JSON_DEPTH` levels: both bound the work every later step (schema validation, storing,
serialising) does on it.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from skillq.errors import InvalidRequest
from skillq.json_values import parse_json

#: Deepest nesting of arrays and objects a request body may have. Deeper documents are
#: almost always an attack on recursive code (schema validation, serialisation).
MAX_JSON_DEPTH = 64
#: Bodies up to this size are parsed on the event loop: a thread hop costs more than that.
INLINE_PARSE_BYTES = 16_384


def check_shape(document: Any, max_nodes: int) -> None:
    """At most `max_nodes` values and `MAX_JSON_DEPTH` levels, checked without recursion (so
    a hostile document cannot exhaust the stack) and stopping at the first excess."""
    nodes, depth, level = 1, 1, [document]
    while level:
        children: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                children.extend(item.values())
            elif isinstance(item, list):
                children.extend(item)
        nodes += len(children)
        if nodes > max_nodes:
            raise InvalidRequest(
                "the request body holds too many values",
                [
                    {
                        "path": "body",
                        "message": f"at most {max_nodes} values (server.max_json_nodes)",
                    }
                ],
            )
        level = [child for child in children if isinstance(child, dict | list)]
        if level:
            depth += 1
        if depth > MAX_JSON_DEPTH:
            raise InvalidRequest(
                "the request body is nested too deeply",
                [{"path": "body", "message": f"at most {MAX_JSON_DEPTH} levels of arrays/objects"}],
            )


def parse_body(body: bytes, max_nodes: int) -> Any:
    """Strict JSON (`NaN`/`Infinity`, bad UTF-8 and deep nesting are a 400, see
    `skillq.json_values.parse_json`), then bounded in its number of values."""
    document = parse_json(body, "body")
    check_shape(document, max_nodes)
    return document


async def read_json(request: Request) -> Any:
    body = await request.body()
    max_nodes = request.app.state.settings.server.max_json_nodes
    if len(body) <= INLINE_PARSE_BYTES:
        return parse_body(body, max_nodes)
    return await run_in_threadpool(parse_body, body, max_nodes)
