"""`index_documents`: add or update documents of a search collection, on the `index` queue.

Incremental: a document whose text and metadata hash the same as last time is skipped, so
re-sending a whole corpus re-indexes only what changed. The index lives in SQLite files
under `search.path`, where the API's search endpoint reads it.

A collection belongs to an owner: the job's owner (whoever submitted it), read from the job's
row, or the `owner` param, which the coordinator accepts only from an admin (or the
submitter naming itself). So a job naming another tenant's collection makes its own.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import dramatiq

from skillq.actors import settings
from skillq.brokers.job_status import current_job_owner
from skillq.brokers.progress import report_progress
from skillq.engine.collection_files import COLLECTION_PATTERN, MAX_OWNER_LENGTH
from skillq.errors import InvalidParams

if TYPE_CHECKING:
    from skillq.engine.search_backend import SearchCollections

INDEX_DOCUMENTS_PARAMS = {
    "type": "object",
    "properties": {
        "collection": {"type": "string", "pattern": COLLECTION_PATTERN},
        "documents": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "string", "minLength": 1, "maxLength": 256},
                    "text": {"type": "string"},
                    "metadata": {"type": "object"},
                },
                "required": ["id", "text"],
                "additionalProperties": False,
            },
            "default": [],
        },
        "force_reindex": {
            "type": "boolean",
            "default": False,
            "description": "re-index every given document even if unchanged",
        },
        "delete_ids": {
            "type": "array",
            "items": {"type": "string", "minLength": 1, "maxLength": 256},
            "default": [],
            "description": "ids of documents to remove from the collection",
        },
        "owner": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_OWNER_LENGTH,
            "pattern": "^[^\\x00]*$",
            "description": "whose collection (admin only); default: the job's owner",
        },
    },
    "required": ["collection"],
    "additionalProperties": False,
}


@functools.cache
def collections() -> SearchCollections:
    """One per process: it caches each collection's vector matrix between searches.

    Imported here, on the first index job, not with the actors: the search engine brings
    numpy (0.18 s of every worker process's boot, and its memory), which only the process
    running the `index` queue needs."""
    from skillq.engine.search_backend import open_collections

    return open_collections(settings.storage.backend, settings.search)


@dramatiq.actor(
    actor_name="index_documents",
    queue_name="index",
    params_schema=INDEX_DOCUMENTS_PARAMS,
    description="Index documents into a search collection (BM25, plus vectors if configured); "
    "only new or changed documents are re-indexed.",
    throws=(InvalidParams,),
    owner_param="owner",
)
def index_documents(
    collection: str,
    documents: list[dict[str, Any]] | None = None,
    force_reindex: bool = False,
    delete_ids: list[str] | None = None,
    owner: str | None = None,
) -> dict[str, Any]:
    report = collections().index(
        collection,
        documents or [],
        owner=owner or current_job_owner(),
        force_reindex=force_reindex,
        delete_ids=delete_ids or (),
        on_progress=report_progress,
    )
    report_progress(1.0, f"{report.indexed} indexed, {report.unchanged} unchanged")
    return report.to_dict()
