"""REST routes of search collections: immediate search (not a job), and the list.

Indexing is a job (`index_documents`); searching reads the collection's SQLite file
directly, so it answers at once with whatever the workers have committed.
"""

from __future__ import annotations

import functools

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from skillq.api.auth.access import require_viewer
from skillq.engine.embeddings import embedder_from_settings
from skillq.engine.search import Collections
from skillq.errors import InvalidParams
from skillq.json_values import shown


@functools.cache
def _collections(root: str, search_settings: object) -> Collections:
    return Collections(root, embedder_from_settings(search_settings))


def collections_of(request: Request) -> Collections:
    search = request.app.state.settings.search
    return _collections(str(search.path), search)


def _k(request: Request) -> int:
    raw = request.query_params.get("k", "10")
    try:
        return int(raw)
    except ValueError:
        raise InvalidParams(
            "k must be an integer", [{"path": "k", "message": f"got {shown(raw)}"}]
        ) from None


async def search_collection(request: Request) -> JSONResponse:
    require_viewer(request)
    name = request.path_params["name"]
    query = request.query_params.get("q")
    if not query:
        raise InvalidParams("q is required", [{"path": "q", "message": "the search text"}])
    k = _k(request)
    hits = await run_in_threadpool(collections_of(request).search, name, query, k)
    return JSONResponse(
        {
            "collection": name,
            "query": query,
            "k": k,
            "hits": [hit.__dict__ for hit in hits],
        }
    )


async def list_collections(request: Request) -> JSONResponse:
    require_viewer(request)
    collections = collections_of(request)

    def load() -> list[dict]:
        return [
            {"name": name, "documents": collections.count(name)} for name in collections.names()
        ]

    return JSONResponse({"collections": await run_in_threadpool(load)})


routes = [
    Route("/api/v1/collections", list_collections, methods=["GET"]),
    Route("/api/v1/collections/{name}/search", search_collection, methods=["GET"]),
]
