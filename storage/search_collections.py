"""Search collections in PostgreSQL: the queries behind `skillq.engine.stored_search`.

When the job store is PostgreSQL, collections live in it too, so an index worker on one
machine and the API on another read and write the same collections (SQLite files under
`search.path` would be on one machine's disk only). Two tables (migration in
`skillq.storage.migrations`):

- `skillq_collection`: one row per (owner, name), with the embedding model of its vectors
  and a generation that moves on every write (a process's cached vectors know they are
  stale);
- `skillq_collection_document`: id, content hash, text, metadata (jsonb), `words`, a
  `tsvector` generated from the text's first 250,000 characters (English stemming, as
  FTS5's porter tokenizer), with a GIN index, and `embedding`: a pgvector `vector` when the
  extension could be had at migration time, else `bytea` (float32, compared in Python by
  the engine).

Every function works on the connection of the database bound with `bind_database`; each
write commits on its own, like one batch of the SQLite backend.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import peewee
from psycopg2.extras import execute_values

from skillq.storage.database import database_proxy

COLLECTIONS = "skillq_collection"
DOCUMENTS = "skillq_collection_document"
TEXT_SEARCH_CONFIG = "english"
#: Whether the migration may use pgvector; a test sets it False to get the bytea fallback on
#: a server that has the extension.
USE_PGVECTOR = True


@dataclass(frozen=True)
class StoredCollection:
    id: int
    generation: int
    embedding_model: str | None


@dataclass(frozen=True)
class StoredDocument:
    doc_id: str
    content_hash: str
    text: str
    metadata: dict[str, Any]
    #: float32 values, or None when the document has no vector yet.
    embedding: Sequence[float] | None = None


def _rows(sql: str, params: Sequence[Any] = ()) -> list[tuple]:
    return list(database_proxy.execute_sql(sql, params).fetchall())


def pgvector_type(database: peewee.Database) -> str | None:
    """The schema-qualified `vector` type when pgvector is (or can be) installed, else None.

    Creating an extension needs a privileged role; without one, or without the package on
    the server, the answer is None and vectors are stored as bytea. Run in a savepoint, so a
    refusal leaves the caller's transaction usable.
    """
    if not USE_PGVECTOR:
        return None
    try:
        with database.atomic():
            database.execute_sql("CREATE EXTENSION IF NOT EXISTS vector SCHEMA public")
    except peewee.DatabaseError:
        return None
    schema = database.execute_sql(
        "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'vector'"
    ).fetchone()
    return None if schema is None else f"{schema[0]}.vector"


def _embedding_type() -> str:
    """`bytea`, or the qualified pgvector type, of the bound database's embedding column."""
    return _column_type(database_proxy.obj)


@functools.lru_cache(maxsize=16)
def _column_type(database: peewee.Database) -> str:
    row = database.execute_sql(
        "SELECT format_type(a.atttypid, a.atttypmod), t.typnamespace::regnamespace::text"
        " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
        " WHERE a.attrelid = %s::regclass AND a.attname = 'embedding'",
        (DOCUMENTS,),
    ).fetchone()
    return "bytea" if row[0] == "bytea" else f"{row[1]}.vector"


def uses_pgvector() -> bool:
    return _embedding_type() != "bytea"


def _vector_schema() -> str:
    return _embedding_type().rsplit(".", 1)[0]


def _vector_param(embedding: Sequence[float] | None) -> Any:
    if embedding is None:
        return None
    if uses_pgvector():
        return "[" + ",".join(repr(float(x)) for x in embedding) + "]"
    import array

    return bytes(array.array("f", embedding).tobytes())


def _vector_placeholder() -> str:
    return f"%s::{_embedding_type()}" if uses_pgvector() else "%s"


# --- collections ---------------------------------------------------------------------------


def find(owner: str, name: str) -> StoredCollection | None:
    rows = _rows(
        f"SELECT id, generation, embedding_model FROM {COLLECTIONS} WHERE owner = %s AND name = %s",
        (owner, name),
    )
    return StoredCollection(*rows[0]) if rows else None


def find_or_create(owner: str, name: str) -> StoredCollection:
    with database_proxy.atomic():
        database_proxy.execute_sql(
            f"INSERT INTO {COLLECTIONS} (owner, name) VALUES (%s, %s)"
            " ON CONFLICT (owner, name) DO NOTHING",
            (owner, name),
        )
    found = find(owner, name)
    assert found is not None  # collections are never deleted
    return found


def owners() -> list[str]:
    return [row[0] for row in _rows(f"SELECT DISTINCT owner FROM {COLLECTIONS} ORDER BY owner")]


def names(owner: str) -> list[str]:
    return [
        row[0]
        for row in _rows(f"SELECT name FROM {COLLECTIONS} WHERE owner = %s ORDER BY name", (owner,))
    ]


def count(collection_id: int) -> int:
    return _rows(f"SELECT count(*) FROM {DOCUMENTS} WHERE collection_id = %s", (collection_id,))[0][
        0
    ]


def generation(collection_id: int) -> int:
    return _rows(f"SELECT generation FROM {COLLECTIONS} WHERE id = %s", (collection_id,))[0][0]


def _bump(collection_id: int, model: str | None) -> None:
    database_proxy.execute_sql(
        f"UPDATE {COLLECTIONS} SET generation = generation + 1,"
        " embedding_model = coalesce(%s, embedding_model) WHERE id = %s",
        (model, collection_id),
    )


# --- documents -----------------------------------------------------------------------------


def hashes(collection_id: int) -> dict[str, str]:
    return dict(
        _rows(
            f"SELECT doc_id, content_hash FROM {DOCUMENTS} WHERE collection_id = %s",
            (collection_id,),
        )
    )


def without_embedding(collection_id: int) -> set[str]:
    return {
        row[0]
        for row in _rows(
            f"SELECT doc_id FROM {DOCUMENTS} WHERE collection_id = %s AND embedding IS NULL",
            (collection_id,),
        )
    }


def clear_embeddings(collection_id: int) -> None:
    """Vectors of another model cannot be compared with the new one's."""
    with database_proxy.atomic():
        database_proxy.execute_sql(
            f"UPDATE {DOCUMENTS} SET embedding = NULL WHERE collection_id = %s", (collection_id,)
        )
        database_proxy.execute_sql(
            f"UPDATE {COLLECTIONS} SET embedding_model = NULL, generation = generation + 1"
            " WHERE id = %s",
            (collection_id,),
        )


def upsert(collection_id: int, documents: Iterable[StoredDocument], model: str | None) -> None:
    """Adds or replaces documents in one transaction, and moves the generation."""
    template = f"(%s, %s, %s, %s, %s::jsonb, {_vector_placeholder()})"
    sql = (
        f"INSERT INTO {DOCUMENTS}"
        " (collection_id, doc_id, content_hash, text, metadata, embedding) VALUES %s"
        " ON CONFLICT (collection_id, doc_id) DO UPDATE SET"
        " content_hash = excluded.content_hash, text = excluded.text,"
        " metadata = excluded.metadata, embedding = excluded.embedding"
    )
    rows = [
        (
            collection_id,
            doc.doc_id,
            doc.content_hash,
            doc.text,
            json.dumps(doc.metadata),
            _vector_param(doc.embedding),
        )
        for doc in documents
    ]
    with database_proxy.atomic():
        # One statement per page of rows, not one round trip per row.
        execute_values(database_proxy.cursor(), sql, rows, template=template, page_size=500)
        _bump(collection_id, model)


def delete(collection_id: int, doc_ids: Sequence[str]) -> int:
    with database_proxy.atomic():
        deleted = database_proxy.execute_sql(
            f"DELETE FROM {DOCUMENTS} WHERE collection_id = %s AND doc_id = ANY(%s)",
            (collection_id, list(doc_ids)),
        ).rowcount
        _bump(collection_id, None)
    return deleted


def documents(row_ids: Sequence[int]) -> dict[int, tuple[str, str, dict[str, Any]]]:
    """Row id -> (document id, text, metadata)."""
    if not row_ids:
        return {}
    return {
        row[0]: (row[1], row[2], row[3])
        for row in _rows(
            f"SELECT id, doc_id, text, metadata FROM {DOCUMENTS} WHERE id = ANY(%s)",
            (list(row_ids),),
        )
    }


# --- keyword ranking -----------------------------------------------------------------------


#: Word -> its tsquery text: fixed for a text search configuration, so kept per process.
_word_queries: dict[str, str] = {}


def word_queries(words: Sequence[str]) -> list[str]:
    """Each word as the tsquery PostgreSQL makes of it (stemmed; stop words give none).

    `plainto_tsquery` reads no operators, so query syntax in a word is inert; the text it
    returns is PostgreSQL's own rendering, safe to cast back.
    """
    missing = [word for word in words if word not in _word_queries]
    if missing:
        rows = _rows(
            f"SELECT w, plainto_tsquery('{TEXT_SEARCH_CONFIG}', w)::text"
            " FROM unnest(%s::text[]) AS w",
            (missing,),
        )
        if len(_word_queries) > 100_000:
            _word_queries.clear()
        _word_queries.update(rows)
    found = [_word_queries.get(word) for word in words]
    return list(dict.fromkeys(query for query in found if query))


def document_frequency(collection_id: int, query: str) -> int:
    return _rows(
        f"SELECT count(*) FROM {DOCUMENTS} WHERE collection_id = %s AND words @@ %s::tsquery",
        (collection_id, query),
    )[0][0]


def keyword_ranking(
    collection_id: int, queries: Sequence[str], weights: Sequence[float], depth: int
) -> list[tuple[int, float]]:
    """Documents matching any query, best first, scored sum(weight * ts_rank) over queries.

    The GIN index finds the candidates (any query matches); each query's `ts_rank` (its
    frequency in the document, normalised by 1 + log of the document's length) is weighted
    by the caller's inverse document frequency, as BM25 weighs its term-frequency part.
    """
    if not queries:
        return []
    # One term per query, inline: a subquery over unnest() per row took twice as long.
    score = " + ".join("%s * ts_rank(d.words, %s::tsquery, 1)" for _ in queries)
    weighted = [value for pair in zip(weights, queries, strict=True) for value in pair]
    return _rows(
        f"SELECT d.id, {score} AS score FROM {DOCUMENTS} d"
        " WHERE d.collection_id = %s AND d.words @@ %s::tsquery"
        " ORDER BY score DESC, d.id LIMIT %s",
        (*weighted, collection_id, " | ".join(f"({query})" for query in queries), depth),
    )


# --- vectors -------------------------------------------------------------------------------


def vector_ranking(
    collection_id: int, vector: Sequence[float], depth: int
) -> list[tuple[int, float]]:
    """With pgvector: the `depth` nearest documents by cosine distance, as similarities."""
    schema = _vector_schema()
    distance = f"OPERATOR({schema}.<=>)"
    literal = _vector_param(vector)
    return [
        (row[0], float(row[1]))
        for row in _rows(
            f"SELECT id, 1 - (embedding {distance} %s::{schema}.vector) FROM {DOCUMENTS}"
            " WHERE collection_id = %s AND embedding IS NOT NULL"
            f" ORDER BY embedding {distance} %s::{schema}.vector, id LIMIT %s",
            (literal, collection_id, literal, depth),
        )
    ]


def stored_vectors(collection_id: int) -> list[tuple[int, bytes]]:
    """Without pgvector: every (row id, float32 bytes) of the collection."""
    return [
        (row[0], bytes(row[1]))
        for row in _rows(
            f"SELECT id, embedding FROM {DOCUMENTS}"
            " WHERE collection_id = %s AND embedding IS NOT NULL ORDER BY id",
            (collection_id,),
        )
    ]
