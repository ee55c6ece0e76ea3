"""Collections in the PostgreSQL store (issue 16): what the shared corpus in test_search.py
does not cover. The embedding column's type (pgvector or the bytea fallback), text
PostgreSQL cannot hold, the copy of SQLite collection files into the store (in process and
through `skillq collections migrate`), and an API and an index worker on separate data
directories sharing only PostgreSQL and Redis: what the worker indexes, the API finds."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from skillq.engine.collection_files import LEGACY_OWNER
from skillq.engine.collection_migration import copy_files_into_store
from skillq.engine.search import Collections
from skillq.engine.stored_search import StoredCollections
from skillq.errors import InvalidParams, NotFound
from skillq.storage import search_collections
from skillq.storage.database import connection, database_proxy
from tests.support import (
    REDIS_URL,
    ROOT,
    bound_store,
    child_env,
    create_postgres_schema,
    drop_postgres_schema,
    postgres_schema_url,
    require_service,
    start_api,
    start_worker,
    wait_for,
    write_settings,
)


class WordEmbedder:
    """A deterministic test embedder: one dimension per word hash."""

    model = "words-v1"

    def embed(self, texts: list[str]) -> np.ndarray:
        matrix = np.zeros((len(texts), 16), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                matrix[row, sum(word.encode()) % 16] += 1
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        return matrix / np.where(norms == 0, 1, norms)


def server_has_pgvector() -> bool:
    with connection():
        row = database_proxy.execute_sql(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'"
        ).fetchone()
    return row[0] > 0


def embedding_column_type() -> str:
    with connection():
        return search_collections._embedding_type()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[None]:
    with bound_store("postgres", tmp_path):
        yield


def test_vectors_use_pgvector_when_the_server_has_it(tmp_path: Path) -> None:
    with bound_store("postgres", tmp_path):
        expected = server_has_pgvector()
        assert search_collections.uses_pgvector() is expected
        assert embedding_column_type().endswith(".vector") is expected


def test_the_fallback_can_be_forced_and_stores_float32_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(search_collections, "USE_PGVECTOR", False)
    with bound_store("postgres", tmp_path):
        assert embedding_column_type() == "bytea"
        collections = StoredCollections(WordEmbedder())
        collections.index("v", [{"id": "a", "text": "walrus tusk"}], owner="o")
        with connection():
            blob = database_proxy.execute_sql(
                "SELECT embedding FROM skillq_collection_document"
            ).fetchone()[0]
        assert np.frombuffer(bytes(blob), dtype=np.float32).shape == (16,)
        hit = collections.search("v", "tusk walrus", owner="o")[0]
        assert hit.id == "a" and hit.similarity == pytest.approx(1.0)


def test_text_postgresql_cannot_hold_is_refused_by_field(store: None) -> None:
    collections = StoredCollections()
    bad = [
        ([{"id": "a\x00", "text": "x"}], "documents.0.id"),
        ([{"id": "a", "text": "nul \x00 inside"}], "documents.0.text"),
        ([{"id": "a", "text": "x", "metadata": {"k": ["ok", "\x00"]}}], "documents.0.metadata.k.1"),
        ([{"id": "a", "text": "lone \ud800 surrogate"}], "documents.0.text"),
        ([{"id": "a", "text": "x", "metadata": {"\ud800": 1}}], "documents.0.metadata"),
    ]
    for documents, path in bad:
        with pytest.raises(InvalidParams) as refused:
            collections.index("docs", documents, owner="o")
        assert refused.value.details[0]["path"] == path
    with pytest.raises(InvalidParams):
        collections.index("docs", [], delete_ids=["\x00"], owner="o")
    # Nothing was written, not even the collection.
    assert collections.names(owner="o") == []
    # A document whose distinct words pass the tsvector's 1 MiB is stored whole; its first
    # 250,000 characters are searchable (PostgreSQL would refuse the whole text's tsvector).
    huge = " ".join(f"w{i}" for i in range(300_000))
    collections.index("docs", [{"id": "big", "text": huge}], owner="o")
    hit = collections.search("docs", "w10", owner="o")[0]
    assert (hit.id, hit.text) == ("big", huge)
    assert collections.search("docs", "w299999", owner="o") == []
    # Query words that are only stop words find nothing; query syntax is inert.
    assert collections.search("docs", "the and of", owner="o") == []
    assert collections.search("docs", "w10 OR NEAR( & !", owner="o")[0].id == "big"


def test_owners_keep_to_their_collections_in_the_store(store: None) -> None:
    collections = StoredCollections()
    collections.index("docs", [{"id": "a1", "text": "alpaca ledger"}], owner="alice")
    collections.index("docs", [{"id": "b1", "text": "beluga"}], delete_ids=["a1"], owner="bob")
    collections.index("private", [{"id": "p", "text": "alpaca"}], owner="alice")
    assert [hit.id for hit in collections.search("docs", "alpaca", owner="alice")] == ["a1"]
    assert collections.search("docs", "alpaca", owner="bob") == []
    with pytest.raises(NotFound) as theirs:
        collections.search("private", "alpaca", owner="bob")
    with pytest.raises(NotFound) as nobody:
        collections.search("nothing", "alpaca", owner="bob")
    assert theirs.value.message == nobody.value.message.replace("nothing", "private")
    assert collections.owners() == ["alice", "bob"]
    assert collections.names(owner="alice") == ["docs", "private"]
    assert (collections.count("docs", owner="alice"), collections.count("docs", owner="bob")) == (
        1,
        1,
    )
    # Owners that are not names: stored as given, never as SQL.
    odd = "x'); DROP TABLE skillq_collection; --/../é"
    collections.index("docs", [{"id": "o", "text": "okapi"}], owner=odd)
    assert odd in collections.owners()
    with pytest.raises(InvalidParams):
        collections.index("docs", [], owner="a\x00b")
    with pytest.raises(InvalidParams, match="invalid collection name"):
        collections.search("../x", "okapi", owner=odd)


def make_files(root: Path) -> list[dict]:
    docs = [
        {"id": f"d{i}", "text": f"shared text word{i}", "metadata": {"n": i}} for i in range(30)
    ]
    files = Collections(root, WordEmbedder())
    files.index("docs", docs, owner="alice")
    Collections(root).index("notes", [{"id": "n", "text": "narwhal"}], owner="bob")
    Collections(root).index("docs", [{"id": "l", "text": "legacy"}], owner=LEGACY_OWNER)
    return docs


def test_sqlite_collections_copy_into_the_store(tmp_path: Path) -> None:
    root = tmp_path / "collections"
    docs = make_files(root)
    broken = Collections(root).path("broken", owner="bob")
    broken.write_bytes(b"not a database at all" * 100)
    with bound_store("postgres", tmp_path):
        stored = StoredCollections(WordEmbedder())
        reports = {(r.owner, r.collection): r for r in copy_files_into_store(root, stored)}
        assert set(reports) == {
            ("alice", "docs"),
            ("bob", "notes"),
            ("bob", "broken"),
            (LEGACY_OWNER, "docs"),
        }
        alice = reports["alice", "docs"]
        assert (alice.copied, alice.unchanged, alice.embedding_model) == (30, 0, "words-v1")
        assert reports["bob", "broken"].error and reports["bob", "broken"].copied == 0
        assert reports["bob", "notes"].embedding_model is None
        # The same hits, the vectors came along, and the next index run finds nothing new.
        hit = stored.search("docs", "word7", owner="alice")[0]
        assert (hit.id, hit.metadata) == ("d7", {"n": 7})
        assert hit.similarity is not None
        again = stored.index("docs", docs, owner="alice")
        assert (again.unchanged, again.embedded) == (30, 0)
        assert stored.search("notes", "narwhal", owner="bob")[0].id == "n"
        # Copying again copies nothing; a file changed since copies only what changed.
        Collections(root, WordEmbedder()).index(
            "docs", [{**docs[3], "text": "changed text"}], owner="alice"
        )
        second = {(r.owner, r.collection): r for r in copy_files_into_store(root, stored)}
        assert (second["alice", "docs"].copied, second["alice", "docs"].unchanged) == (1, 29)
        assert stored.search("docs", "changed", owner="alice")[0].id == "d3"
    # The files are untouched by the copy.
    assert Collections(root).count("docs", owner="alice") == 30


def run_cli(settings_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "skillq", *args],
        cwd=ROOT,
        env=child_env(settings_path),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_collections_migrate_command(tmp_path: Path) -> None:
    require_service("postgres")
    data = tmp_path / "data"
    make_files(data / "collections")
    sqlite_settings = write_settings(tmp_path, {"server": {"data_dir": str(data)}})
    refused = run_cli(sqlite_settings, "collections", "migrate")
    assert refused.returncode == 2 and "store is SQLite" in refused.stderr
    schema = create_postgres_schema()
    try:
        settings = write_settings(
            tmp_path,
            {
                "server": {"data_dir": str(data)},
                "storage": {"backend": "postgres", "url": postgres_schema_url(schema)},
            },
        )
        done = run_cli(settings, "collections", "migrate")
        assert done.returncode == 0, done.stderr
        copied = {(r["owner"], r["collection"]): r["copied"] for r in json.loads(done.stdout)}
        assert copied == {("alice", "docs"): 30, ("bob", "notes"): 1, (LEGACY_OWNER, "docs"): 1}
        found = run_cli(settings, "search", "notes", "narwhal", "--owner", "bob")
        assert found.returncode == 0, found.stderr
        assert [hit["id"] for hit in json.loads(found.stdout)] == ["n"]
        missing = run_cli(settings, "collections", "migrate", "--from", str(tmp_path / "none"))
        assert missing.returncode == 2 and "no folder" in missing.stderr
    finally:
        drop_postgres_schema(schema)


@pytest.fixture
def shared_services(tmp_path: Path) -> Iterator[dict[str, dict]]:
    """Settings sections two machines would share: one PostgreSQL schema, one Redis
    namespace."""
    require_service("postgres")
    require_service("redis")
    schema = create_postgres_schema()
    namespace = f"skillq-test-{uuid.uuid4().hex[:12]}"
    try:
        yield {
            "server": {"mode": "remote"},
            "storage": {"backend": "postgres", "url": postgres_schema_url(schema)},
            "broker": {"backend": "redis", "url": REDIS_URL, "namespace": namespace},
            "workers": {"max_retries": 0, "retry_delay_secs": 0},
        }
    finally:
        drop_postgres_schema(schema)
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"{namespace}:*"):
            client.delete(key)


def machine(tmp_path: Path, name: str, shared: dict[str, dict]) -> Path:
    """A settings file of its own, differing from the other machine's only in data_dir."""
    directory = tmp_path / name
    directory.mkdir()
    sections = {section: dict(values) for section, values in shared.items()}
    sections["server"]["data_dir"] = str(directory / "data")
    return write_settings(directory, sections)


def test_an_index_worker_and_the_api_on_separate_data_dirs_share_collections(
    tmp_path: Path, shared_services: dict[str, dict]
) -> None:
    api_settings = machine(tmp_path, "api-machine", shared_services)
    worker_settings = machine(tmp_path, "worker-machine", shared_services)
    api, base_url = start_api(api_settings, api_settings.parent)
    try:
        worker = start_worker(worker_settings, worker_settings.parent)
        try:
            with httpx.Client(base_url=base_url, timeout=10) as http:
                documents = [
                    {"id": f"d{i}", "text": f"report about topic{i}", "metadata": {"i": i}}
                    for i in range(50)
                ]
                params = {"collection": "reports", "documents": documents}
                submitted = http.post(
                    "/api/v1/jobs", json={"type": "index_documents", "params": params}
                )
                assert submitted.status_code == 202, submitted.text
                job_id = submitted.json()["id"]

                def finished() -> dict | None:
                    job = http.get(f"/api/v1/jobs/{job_id}").json()
                    return job if job["state"] in ("completed", "failed") else None

                job = wait_for(finished, timeout=60, what="the index job")
                assert job["state"] == "completed", (job, worker.log())
                assert job["result"]["added"] == 50
                found = http.get("/api/v1/collections/reports/search", params={"q": "topic17"})
                assert found.status_code == 200, found.text
                assert found.json()["hits"][0]["id"] == "d17"
                listed = http.get("/api/v1/collections").json()["collections"]
                assert listed == [{"owner": "local", "name": "reports", "documents": 50}]
                missing = http.get("/api/v1/collections/nope/search", params={"q": "topic1"})
                assert missing.status_code == 404
        finally:
            worker.stop()
    finally:
        api.stop()
    # Neither machine wrote a collection file: the collections are in PostgreSQL.
    for settings in (api_settings, worker_settings):
        assert not (settings.parent / "data" / "collections").exists()


def test_migration_6_makes_the_tables_on_postgresql_only(tmp_path: Path) -> None:
    from skillq.storage.migrations import downgrade, upgrade

    with bound_store("sqlite", tmp_path / "lite"):
        assert not database_proxy.table_exists("skillq_collection")
    with bound_store("postgres", tmp_path):
        assert database_proxy.table_exists("skillq_collection")
        StoredCollections().index("docs", [{"id": "a", "text": "x"}], owner="o")
        downgrade(5)
        assert not database_proxy.table_exists("skillq_collection")
        assert not database_proxy.table_exists("skillq_collection_document")
        upgrade()
        assert StoredCollections().names(owner="o") == []


def test_a_postgresql_deployment_with_collection_files_is_told_to_migrate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from skillq.engine.search_backend import open_collections
    from skillq.settings import SearchSettings

    search = SearchSettings(path=tmp_path / "collections")
    assert isinstance(open_collections("sqlite", search), Collections)
    Collections(search.path).index("docs", [{"id": "a", "text": "x"}], owner="o")
    with caplog.at_level("WARNING"):
        assert isinstance(open_collections("sqlite", search), Collections)
    assert "collections migrate" not in caplog.text
    with caplog.at_level("WARNING"):
        assert isinstance(open_collections("postgres", search), StoredCollections)
    assert "skillq collections migrate" in caplog.text
