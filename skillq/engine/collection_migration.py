"""Copying a deployment's SQLite collection files into the PostgreSQL store.

A deployment that moves its job store to PostgreSQL (to run the API and workers on several
machines) searches collections in the store from then on; the files under `search.path`
are not read any more. `skillq collections migrate` copies them in: every owner's every
collection, each document with its content hash and vector, so nothing is re-embedded and
the next incremental index run finds them unchanged. The files stay where they were (delete
them once the copy is checked); running the copy again copies only what differs.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from skillq.engine.collection_files import LEGACY_OWNER, CollectionFiles
from skillq.engine.stored_search import StoredCollections
from skillq.storage.search_collections import StoredDocument


@dataclass(frozen=True)
class CopyReport:
    owner: str
    collection: str
    documents: int
    copied: int
    unchanged: int
    embedding_model: str | None
    #: Why the file was not copied (it is not a readable collection), else None.
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def copy_files_into_store(
    root: Path, target: StoredCollections, *, legacy_owner: str = LEGACY_OWNER
) -> list[CopyReport]:
    """Copies every collection file under `root` into `target`; one report per collection."""
    files = CollectionFiles(Path(root), legacy_owner=legacy_owner)
    reports = []
    for owner in files.owners():
        for name in files.names(owner):
            try:
                model, documents = _read(files.path(name, owner=owner))
            except (sqlite3.Error, ValueError) as error:
                reports.append(CopyReport(owner, name, 0, 0, 0, None, str(error)))
                continue
            copied, unchanged = target.import_documents(
                name, documents, owner=owner, embedding_model=model
            )
            reports.append(CopyReport(owner, name, len(documents), copied, unchanged, model))
    return reports


def _read(path: Path) -> tuple[str | None, list[StoredDocument]]:
    # Read-only: the copy never changes the file it copies from.
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'embedding_model'").fetchone()
        model = None if row is None else row[0]
        documents = [
            StoredDocument(
                doc_id,
                digest,
                text,
                json.loads(metadata),
                None if blob is None else np.frombuffer(blob, dtype=np.float32).tolist(),
            )
            for doc_id, digest, text, metadata, blob in db.execute(
                "SELECT doc_id, content_hash, text, metadata, embedding FROM documents"
                " ORDER BY rowid"
            )
        ]
    finally:
        db.close()
    return model, documents
