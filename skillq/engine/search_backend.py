"""Where a deployment's search collections live: the choice follows the job store.

A SQLite store means one machine: collections are SQLite FTS5 files under `search.path`
(`skillq.engine.search`). A PostgreSQL store means the API, workers and CLI may be on
different machines: collections are in the database (`skillq.engine.stored_search`), so
whatever a worker indexes, every API process can search. Both answer the same calls.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from skillq.engine.embeddings import embedder_from_settings
from skillq.engine.search import Collections
from skillq.engine.stored_search import StoredCollections

logger = logging.getLogger(__name__)

SearchCollections = Collections | StoredCollections


def open_collections(storage_backend: str, search: Any) -> SearchCollections:
    """The collections for a store of `storage_backend` and the `search` settings.

    With PostgreSQL, the store must already be bound (`skillq.storage.bind_database`), as it
    is in the API, the workers and the CLI commands that read the store.
    """
    embedder = embedder_from_settings(search)
    if storage_backend == "postgres":
        _warn_of_files(Path(search.path))
        return StoredCollections(embedder)
    return Collections(search.path, embedder)


def _warn_of_files(root: Path) -> None:
    """Collection files a PostgreSQL deployment no longer reads: say how to bring them in."""
    if root.is_dir() and (any(root.glob("o-*/*.db")) or any(root.glob("*.db"))):
        logger.warning(
            "Search collections are in the PostgreSQL store, but %s holds collection files "
            "that searches no longer read: `skillq collections migrate` copies them in.",
            root,
        )
