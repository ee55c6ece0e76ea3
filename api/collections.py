"""REST routes of search collections: immediate search (not a job), and the list.

Indexing is a job (`index_documents`); searching reads the collection's SQLite file
directly, so it answers at once with whatever the workers have committed.

A collection belongs to an owner. Everyone reaches their own by name; another owner's
answers 404 like a missing one. An admin may pass `?owner=` to reach anyone's (and lists
every owner's); anyone else naming another owner is refused with 403, whatever exists.
"""

from __future__ import annotations

import functools

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from skillq.api.auth.access import require_viewer
from skillq.api.principal import Principal
from skillq.engine.collection_files import check_owner
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


def _named_owner(request: Request) -> str | None:
    named = request.query_params.get("owner")
    return None if named is None else check_owner(named)


async def search_collection(request: Request) -> JSONResponse:
    principal = require_viewer(request)
    owner = principal.data_owner(_named_owner(request))
    name = request.path_params["name"]
    query = request.query_params.get("q")
    if not query:
        raise InvalidParams("q is required", [{"path": "q", "message": "the search text"}])
    k = _k(request)
    hits = await run_in_threadpool(collections_of(request).search, name, query, k, owner=owner)
    return JSONResponse(
        {
            "owner": owner,
            "collection": name,
            "query": query,
            "k": k,
            "hits": [hit.__dict__ for hit in hits],
        }
    )


def _owners_listed(principal: Principal, named: str | None, collections: Collections) -> list[str]:
    if named is None and principal.is_admin:
        return collections.owners()
    return [principal.data_owner(named)]


async def list_collections(request: Request) -> JSONResponse:
    principal = require_viewer(request)
    named = _named_owner(request)
    collections = collections_of(request)

    def load() -> list[dict]:
        return [
            {"owner": owner, "name": name, "documents": collections.count(name, owner=owner)}
            for owner in _owners_listed(principal, named, collections)
            for name in collections.names(owner=owner)
        ]

    return JSONResponse({"collections": await run_in_threadpool(load)})


routes = [
    Route("/api/v1/collections", list_collections, methods=["GET"]),
    Route("/api/v1/collections/{name}/search", search_collection, methods=["GET"]),
]
