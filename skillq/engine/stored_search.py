"""Collections in the PostgreSQL job store: the API of `Collections`, other machines' view.

With `[storage] backend = "postgres"` the API, the index workers and the CLI may run on
different machines; collections in SQLite files under each one's `search.path` would not be
shared, so they live in the store (`skillq.storage.search_collections`).

Ranking, BM25-like. PostgreSQL's `ts_rank` scores how often a word occurs in a document,
normalised by the document's length, but knows nothing of how rare the word is in the
collection: alone, a query's common word would weigh as much as its distinctive one. So
each word's `ts_rank` is weighted by BM25's inverse document frequency,
ln(1 + (N - df + 0.5) / (df + 0.5)), from a count per word over the GIN index, cached until
the collection changes; and, as on SQLite, words in at least half the documents are left out
when rarer ones remain. `ts_rank_cd` (cover density) was not chosen: it rewards query words
close together, which a bag-of-words query of unrelated words does not mean, and still has
no IDF. The shared test corpus ranks each distinctive word's document first on both
backends (tests/test_search.py).

Vectors: with pgvector, the store ranks them (`<=>`, cosine distance); without it they are
float32 bytes and the engine ranks them in memory, as on SQLite, its matrix cached per
collection generation. Hybrid ranking is the same Reciprocal Rank Fusion on both backends.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from skillq.engine.collection_files import check_collection, check_owner
from skillq.engine.collection_model import (
    Hit,
    IndexReport,
    check_k,
    check_unique_ids,
    content_hash,
    fuse,
    words_of,
)
from skillq.engine.embeddings import Embedder
from skillq.engine.search import BATCH
from skillq.errors import InvalidParams, NotFound
from skillq.storage import search_collections as store
from skillq.storage.database import connection
from skillq.storage.search_collections import StoredCollection, StoredDocument


def check_storable(documents: list[dict[str, Any]], delete_ids: Iterable[str]) -> None:
    """PostgreSQL text and jsonb hold no NUL and no lone surrogate: say where, not a 500."""
    for i, doc in enumerate(documents):
        _check_text(doc["id"], f"documents.{i}.id")
        _check_text(doc["text"], f"documents.{i}.text")
        _check_json(doc.get("metadata") or {}, f"documents.{i}.metadata")
    for i, doc_id in enumerate(delete_ids):
        _check_text(doc_id, f"delete_ids.{i}")


def _check_json(value: Any, path: str) -> None:
    if isinstance(value, str):
        _check_text(value, path)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(str(key), path)
            _check_json(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_json(item, f"{path}.{i}")


def _check_text(value: str, path: str) -> None:
    if "\x00" in value:
        raise InvalidParams("text holds a NUL character", [{"path": path, "message": "no NUL"}])
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidParams(
            "text is not valid Unicode", [{"path": path, "message": "a lone surrogate"}]
        ) from None


class StoredCollections:
    """Collections in the store bound with `skillq.storage.bind_database`; thread-safe."""

    def __init__(self, embedder: Embedder | None = None) -> None:
        self.embedder = embedder
        #: Per collection id: generation, row ids and vector matrix (without pgvector).
        self._vectors: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}
        #: Per collection id: generation, document count, document frequency per tsquery.
        self._frequencies: dict[int, tuple[int, int, dict[str, int]]] = {}
        self._lock = threading.Lock()

    def _find(self, collection: str, owner: str) -> StoredCollection:
        found = store.find(check_owner(owner), check_collection(collection))
        if found is None:
            # The same answer for another owner's collection: existence does not leak.
            raise NotFound(f"no collection named {collection!r}")
        return found

    def owners(self) -> list[str]:
        with connection():
            return store.owners()

    def names(self, *, owner: str) -> list[str]:
        with connection():
            return store.names(check_owner(owner))

    def count(self, collection: str, *, owner: str) -> int:
        with connection():
            return store.count(self._find(collection, owner).id)

    def index(
        self,
        collection: str,
        documents: list[dict[str, Any]],
        *,
        owner: str,
        force_reindex: bool = False,
        delete_ids: Iterable[str] = (),
        on_progress: Callable[[float, str], None] | None = None,
    ) -> IndexReport:
        """As `Collections.index`: new and changed documents only, `BATCH` per transaction."""
        check_collection(collection)
        check_owner(owner)
        check_unique_ids(documents)
        ids = list(dict.fromkeys(delete_ids))
        check_storable(documents, ids)
        with connection():
            found = store.find_or_create(owner, collection)
            report = self._index(found, documents, force_reindex, ids, on_progress)
        return IndexReport(owner=owner, collection=collection, **report)

    def _index(
        self,
        found: StoredCollection,
        documents: list[dict[str, Any]],
        force: bool,
        delete_ids: list[str],
        on_progress: Callable[[float, str], None] | None,
    ) -> dict[str, int]:
        known = store.hashes(found.id)
        model = self.embedder.model if self.embedder else None
        if model is not None and found.embedding_model not in (None, model):
            store.clear_embeddings(found.id)
        added = updated = embedded = 0
        todo: list[StoredDocument] = []
        for doc in documents:
            metadata = doc.get("metadata") or {}
            digest = content_hash(doc["text"], metadata)
            old = known.get(doc["id"])
            if force or old != digest:
                todo.append(StoredDocument(doc["id"], digest, doc["text"], metadata))
                added, updated = (added + 1, updated) if old is None else (added, updated + 1)
        if model is not None:
            missing = store.without_embedding(found.id) - {doc.doc_id for doc in todo}
            todo += [
                StoredDocument(d["id"], known[d["id"]], d["text"], d.get("metadata") or {})
                for d in documents
                if d["id"] in missing
            ]
        for start in range(0, len(todo), BATCH):
            batch = todo[start : start + BATCH]
            if self.embedder is not None:
                matrix = self.embedder.embed([doc.text for doc in batch])
                batch = [
                    StoredDocument(d.doc_id, d.content_hash, d.text, d.metadata, row.tolist())
                    for d, row in zip(batch, matrix.astype(np.float32), strict=True)
                ]
                embedded += len(batch)
            store.upsert(found.id, batch, model)
            if on_progress is not None:
                done = start + len(batch)
                on_progress(done / len(todo), f"indexed {done} of {len(todo)} documents")
        deleted = 0
        for start in range(0, len(delete_ids), BATCH):
            deleted += store.delete(found.id, delete_ids[start : start + BATCH])
        return {
            "received": len(documents),
            "added": added,
            "updated": updated,
            "unchanged": len(documents) - added - updated,
            "deleted": deleted,
            "embedded": embedded,
            "total": store.count(found.id),
        }

    def import_documents(
        self,
        collection: str,
        documents: list[StoredDocument],
        *,
        owner: str,
        embedding_model: str | None,
    ) -> tuple[int, int]:
        """Copies documents as they were stored elsewhere, content hash and vector included
        (nothing is embedded again); returns (copied, unchanged). A document whose hash the
        store already has is left alone, so a copy can be re-run."""
        check_collection(collection)
        check_owner(owner)
        check_storable(
            [{"id": d.doc_id, "text": d.text, "metadata": d.metadata} for d in documents], ()
        )
        with connection():
            found = store.find_or_create(owner, collection)
            if embedding_model is not None and found.embedding_model not in (
                None,
                embedding_model,
            ):
                store.clear_embeddings(found.id)
            known = store.hashes(found.id)
            todo = [d for d in documents if known.get(d.doc_id) != d.content_hash]
            if embedding_model is None:
                todo = [StoredDocument(d.doc_id, d.content_hash, d.text, d.metadata) for d in todo]
            for start in range(0, len(todo), BATCH):
                store.upsert(found.id, todo[start : start + BATCH], embedding_model)
        return len(todo), len(documents) - len(todo)

    def search(self, collection: str, query: str, k: int = 10, *, owner: str) -> list[Hit]:
        """As `Collections.search`: keyword ranking, fused with vector similarity when the
        collection has vectors of the configured embedder's model."""
        check_k(k)
        words = words_of(query)
        with connection():
            found = self._find(collection, owner)
            if not words:  # punctuation only: matches nothing, as on SQLite
                return []
            depth = k if self.embedder is None else max(4 * k, 50)
            bm25 = dict(self._keyword_ranking(found, words, depth))
            similarity = self._vector_ranking(found, query, depth)
            order, scores = fuse(bm25, similarity, k)
            rows = store.documents(order)
        return [
            Hit(
                id=rows[rowid][0],
                score=round(scores[rowid], 6),
                text=rows[rowid][1],
                metadata=rows[rowid][2],
                bm25=None if rowid not in bm25 else round(bm25[rowid], 6),
                similarity=None if rowid not in similarity else round(similarity[rowid], 6),
            )
            for rowid in order
            if rowid in rows
        ]

    def _keyword_ranking(
        self, found: StoredCollection, words: list[str], depth: int
    ) -> list[tuple[int, float]]:
        queries = store.word_queries(words)
        if not queries:
            return []  # only stop words
        total, frequency = self._frequencies_of(found, queries)
        if len(queries) > 1:
            rare = [query for query in queries if frequency[query] * 2 < total]
            # Rarer words found nowhere do not count: they would leave nothing to match.
            queries = rare if any(frequency[query] for query in rare) else queries
        weights = [
            math.log(1 + (total - frequency[q] + 0.5) / (frequency[q] + 0.5)) for q in queries
        ]
        return store.keyword_ranking(found.id, queries, weights, depth)

    def _frequencies_of(
        self, found: StoredCollection, queries: list[str]
    ) -> tuple[int, dict[str, int]]:
        """Documents in the collection, and how many match each query: cached per generation."""
        with self._lock:
            cached = self._frequencies.get(found.id)
        if cached is None or cached[0] != found.generation or len(cached[2]) > 100_000:
            cached = (found.generation, store.count(found.id), {})
            with self._lock:
                self._frequencies[found.id] = cached
        _, total, frequency = cached
        for query in queries:
            if query not in frequency:
                frequency[query] = store.document_frequency(found.id, query)
        return total, frequency

    def _vector_ranking(self, found: StoredCollection, query: str, depth: int) -> dict[int, float]:
        if self.embedder is None or found.embedding_model != self.embedder.model:
            return {}
        vector = self.embedder.embed([query])[0].astype(np.float32)
        if store.uses_pgvector():
            return dict(store.vector_ranking(found.id, vector.tolist(), depth))
        rowids, matrix = self._matrix(found)
        if not len(rowids):
            return {}
        scores = matrix @ vector
        top = np.argsort(-scores)[:depth]
        return {int(rowids[i]): float(scores[i]) for i in top}

    def _matrix(self, found: StoredCollection) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            cached = self._vectors.get(found.id)
        if cached is not None and cached[0] == found.generation:
            return cached[1], cached[2]
        rows = store.stored_vectors(found.id)
        rowids = np.array([row[0] for row in rows], dtype=np.int64)
        matrix = (
            np.stack([np.frombuffer(row[1], dtype=np.float32) for row in rows])
            if rows
            else np.zeros((0, 0), dtype=np.float32)
        )
        with self._lock:
            self._vectors[found.id] = (found.generation, rowids, matrix)
        return rowids, matrix
