"""Where a deployment's search collections live: the choice follows the job store.

A SQLite store means one machine: collections are SQLite FTS5 files under `search.path`
(`skillq.engine.search`). A PostgreSQL store means the API, workers and CLI may be on
different machines: collections are in the database (`skillq.engine.stored_search`), so
whatever a worker indexes, every API process can search. Both answer the same calls.
"""

from __future__ import annotations

from typing import Any

from skillq.engine.embeddings import embedder_from_settings
from skillq.engine.search import Collections
from skillq.engine.stored_search import StoredCollections

SearchCollections = Collections | StoredCollections


def open_collections(storage_backend: str, search: Any) -> SearchCollections:
    """The collections for a store of `storage_backend` and the `search` settings.

    With PostgreSQL, the store must already be bound (`skillq.storage.bind_database`), as it
    is in the API, the workers and the CLI commands that read the store.
    """
    embedder = embedder_from_settings(search)
    if storage_backend == "postgres":
        return StoredCollections(embedder)
    return Collections(search.path, embedder)
