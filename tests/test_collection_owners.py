"""Search collections belong to an owner (issue 11, finding 2).

In process: two owners' collections of one name are independent, any subject maps to its
own folder inside `search.path`, and collections made before owners move to `local`.
End to end, in `jwt` mode with a real API and worker: Bob cannot search, index into or
delete from Alice's collection over REST, MCP or an `index_documents` job, and an admin can
with `owner`.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import jwt
import pytest

from skillq.engine.collection_files import LEGACY_OWNER
from skillq.engine.search import Collections
from skillq.errors import InvalidParams, NotFound
from tests.mcp_clients import connect
from tests.support import (
    api_with_worker,
    create_postgres_schema,
    drop_postgres_schema,
    postgres_schema_url,
    require_service,
    wait_for,
)

SECRET = "collection-owners-secret-" + "x" * 32


def test_two_owners_have_independent_collections_of_one_name(tmp_path: Path) -> None:
    collections = Collections(tmp_path)
    collections.index("docs", [{"id": "a1", "text": "alpaca ledger"}], owner="alice")
    report = collections.index(
        "docs", [{"id": "b1", "text": "beluga notes"}], delete_ids=["a1"], owner="bob"
    )
    assert (report.owner, report.deleted, report.total) == ("bob", 0, 1)
    assert [hit.id for hit in collections.search("docs", "alpaca", owner="alice")] == ["a1"]
    assert collections.search("docs", "alpaca", owner="bob") == []
    assert [hit.id for hit in collections.search("docs", "beluga", owner="bob")] == ["b1"]
    collections.index("private", [{"id": "p", "text": "alpaca"}], owner="alice")
    # Another owner's collection is missing, in the very words of a missing one.
    with pytest.raises(NotFound) as theirs:
        collections.search("private", "alpaca", owner="bob")
    with pytest.raises(NotFound) as nobody:
        Collections(tmp_path / "empty").search("private", "alpaca", owner="bob")
    assert theirs.value.message == nobody.value.message
    assert collections.owners() == ["alice", "bob"]
    assert collections.names(owner="alice") == ["docs", "private"]
    assert collections.names(owner="bob") == ["docs"]
    assert collections.names(owner="carol") == []
    assert collections.count("docs", owner="alice") == 1


def test_any_subject_gets_its_own_folder_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "collections"
    collections = Collections(root)
    owners = ["../escape", "a/b", "Alice", "alice", ".", "ü" * 200, "local"]
    for i, owner in enumerate(owners):
        collections.index("docs", [{"id": str(i), "text": f"word{i}"}], owner=owner)
    folders = {collections.path("docs", owner=owner).parent for owner in owners}
    assert len(folders) == len(owners)
    assert all(folder.parent == root for folder in folders)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["collections"]  # nothing escaped
    assert collections.owners() == sorted(owners)
    # An owner file that does not match its folder (edited, copied) names nobody.
    (collections.path("docs", owner="a/b").parent / "owner").write_text("alice")
    (collections.path("docs", owner="Alice").parent / "owner").write_text("")
    assert collections.owners() == sorted(set(owners) - {"a/b", "Alice"})
    for i, owner in enumerate(owners):
        assert [hit.id for hit in collections.search("docs", f"word{i}", owner=owner)] == [str(i)]
    for bad in ("", "x" * 201, "nul\x00"):
        with pytest.raises(InvalidParams, match="invalid owner"):
            collections.search("docs", "word1", owner=bad)


def _legacy_collection(root: Path, name: str, documents: list[dict]) -> None:
    """A collection as made before owners: `<root>/<name>.db`, its last writes still in the
    write-ahead log (a process that ended without checkpointing)."""
    scratch = root.parent / f"scratch-{name}"
    made = Collections(scratch)
    made.index(name, documents[:1], owner="whoever")
    source = made.path(name, owner="whoever")
    writer = sqlite3.connect(source, isolation_level=None)
    writer.execute("PRAGMA wal_autocheckpoint=0")
    rows = [(d["id"], "h", d["text"], "{}") for d in documents[1:]]
    writer.executemany(
        "INSERT INTO documents (doc_id, content_hash, text, metadata) VALUES (?, ?, ?, ?)", rows
    )
    root.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal"):
        shutil.copyfile(f"{source}{suffix}", root / f"{name}.db{suffix}")
    writer.close()
    shutil.rmtree(scratch)


def test_collections_made_before_owners_move_to_the_local_owner(tmp_path: Path) -> None:
    root = tmp_path / "collections"
    docs = [{"id": "old", "text": "walrus"}, {"id": "late", "text": "narwhal"}]
    _legacy_collection(root, "notes", docs)
    assert (root / "notes.db-wal").stat().st_size > 0
    collections = Collections(root)
    assert LEGACY_OWNER == "local"
    assert [hit.id for hit in collections.search("notes", "walrus", owner="local")] == ["old"]
    # What was only in the write-ahead log moved too.
    assert [hit.id for hit in collections.search("notes", "narwhal", owner="local")] == ["late"]
    assert sorted(p.name for p in root.glob("notes*")) == []
    with pytest.raises(NotFound):
        collections.search("notes", "walrus", owner="alice")
    assert collections.owners() == ["local"]
    # Another process (a fresh instance) finds it where it now is; nothing moves twice.
    assert Collections(root).count("notes", owner="local") == 2
    # A process that listed the old file before this one moved it makes no empty one.
    Collections(root).files._move(root / "notes.db")
    assert not (root / "notes.db").exists()
    assert Collections(root).count("notes", owner="local") == 2


def test_a_legacy_file_never_overwrites_a_collection_nor_stops_the_others(tmp_path: Path) -> None:
    root = tmp_path / "collections"
    current = Collections(root)
    current.index("notes", [{"id": "new", "text": "current"}], owner="local")
    _legacy_collection(root, "notes", [{"id": "old", "text": "legacy"}])
    _legacy_collection(root, "other", [{"id": "o", "text": "kept"}])
    (root / "garbage.db").write_bytes(b"not a database at all, " * 100)
    later = Collections(root)
    assert [hit.id for hit in later.search("notes", "current", owner="local")] == ["new"]
    assert later.search("notes", "legacy", owner="local") == []
    assert (root / "notes.db").is_file()  # left for the operator, with a warning
    assert [hit.id for hit in later.search("other", "kept", owner="local")] == ["o"]
    assert (root / "garbage.db").is_file() and later.names(owner="local") == ["notes", "other"]


def test_an_operator_can_pick_the_owner_of_legacy_collections(tmp_path: Path) -> None:
    root = tmp_path / "collections"
    _legacy_collection(root, "notes", [{"id": "old", "text": "walrus"}])
    collections = Collections(root, legacy_owner="archive")
    assert collections.count("notes", owner="archive") == 1
    assert collections.names(owner="local") == []  # counting a missing one is 0, not an error
    with pytest.raises(NotFound):
        collections.search("notes", "walrus", owner="local")


# --- end to end, jwt mode: REST, MCP and index_documents jobs ---


def token(subject: str, *roles: str) -> dict[str, str]:
    claims = {
        "sub": subject,
        "roles": list(roles),
        "iss": "skillq",
        "aud": "skillq-api",
        "exp": int(time.time()) + 3600,
    }
    return {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}


ALICE, BOB, CAROL = token("alice", "submitter"), token("bob", "submitter"), token("carol", "viewer")
ADMIN = token("root", "admin")


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def base_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The stack on each store: with PostgreSQL, collections live in the store."""
    directory = tmp_path_factory.mktemp("collection-owners")
    sections = {
        "server": {"data_dir": str(directory / "data")},
        "workers": {"max_retries": 0, "retry_delay_secs": 0},
        "auth": {"mode": "jwt"},
        "auth.jwt": {"secret": SECRET},
        "mcp": {"inline_wait_secs": 60},
    }
    schema = None
    if request.param == "postgres":
        require_service("postgres")
        schema = create_postgres_schema()
        sections["storage"] = {"backend": "postgres", "url": postgres_schema_url(schema)}
    try:
        with api_with_worker(directory, sections) as url:
            yield url
    finally:
        if schema is not None:
            drop_postgres_schema(schema)


def index(base_url: str, headers: dict, params: dict) -> httpx.Response:
    """Submits an index_documents job; returns the submission's answer, or the finished job."""
    with httpx.Client(base_url=base_url, headers=headers, timeout=10) as http:
        submitted = http.post("/api/v1/jobs", json={"type": "index_documents", "params": params})
        if submitted.status_code != 202:
            return submitted
        job_id = submitted.json()["id"]

        def finished() -> httpx.Response | None:
            job = http.get(f"/api/v1/jobs/{job_id}")
            return job if job.json()["state"] in ("completed", "failed", "cancelled") else None

        return wait_for(finished, timeout=60, what=f"job {job_id} to finish")


def search(base_url: str, headers: dict, name: str, **params: str) -> httpx.Response:
    with httpx.Client(base_url=base_url, headers=headers, timeout=10) as http:
        return http.get(f"/api/v1/collections/{name}/search", params={"q": "x", **params})


def hit_ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [hit["id"] for hit in response.json()["hits"]]


def jobs_of(base_url: str, headers: dict) -> list[str]:
    with httpx.Client(base_url=base_url, headers=headers, timeout=10) as http:
        return [job["id"] for job in http.get("/api/v1/jobs", params={"limit": 100}).json()["jobs"]]


def test_another_owner_cannot_search_index_or_delete_over_rest(base_url: str) -> None:
    docs = [{"id": "s1", "text": "launch codes zebra"}, {"id": "s2", "text": "vault combo"}]
    job = index(base_url, ALICE, {"collection": "secrets", "documents": docs})
    assert job.json()["state"] == "completed", job.text
    assert job.json()["result"]["owner"] == "alice"
    assert hit_ids(search(base_url, ALICE, "secrets", q="zebra")) == ["s1"]

    # Bob by name: 404, word for word the answer for a collection nobody has.
    theirs = search(base_url, BOB, "secrets", q="zebra")
    missing = search(base_url, BOB, "no-such-collection", q="zebra")
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json() == {
        **missing.json(),
        "error": {
            **missing.json()["error"],
            "message": missing.json()["error"]["message"].replace("no-such-collection", "secrets"),
        },
    }
    # Naming Alice is refused whether or not she has such a collection.
    for name in ("secrets", "no-such-collection"):
        refused = search(base_url, BOB, name, q="zebra", owner="alice")
        assert refused.status_code == 403, refused.text
    assert search(base_url, BOB, "secrets", q="zebra", owner="bob").status_code == 404
    with httpx.Client(base_url=base_url, headers=BOB, timeout=10) as http:
        assert http.get("/api/v1/collections").json() == {"collections": []}
        assert http.get("/api/v1/collections", params={"owner": "alice"}).status_code == 403

    # Bob's job naming `secrets` makes his own collection; Alice's is untouched.
    before = jobs_of(base_url, BOB)
    job = index(
        base_url,
        BOB,
        {
            "collection": "secrets",
            "documents": [{"id": "b", "text": "zebra"}],
            "delete_ids": ["s1"],
        },
    )
    assert job.json()["state"] == "completed", job.text
    result = job.json()["result"]
    assert (result["owner"], result["deleted"], result["total"]) == ("bob", 0, 1)
    assert hit_ids(search(base_url, ALICE, "secrets", q="zebra")) == ["s1"]
    assert hit_ids(search(base_url, BOB, "secrets", q="zebra")) == ["b"]
    # Naming Alice in the job is refused at submission: no job is made.
    refused = index(
        base_url, BOB, {"collection": "secrets", "delete_ids": ["s1"], "owner": "alice"}
    )
    assert refused.status_code == 403, refused.text
    assert len(jobs_of(base_url, BOB)) == len(before) + 1
    assert hit_ids(search(base_url, ALICE, "secrets", q="zebra")) == ["s1"]
    # Naming himself is fine.
    job = index(base_url, BOB, {"collection": "mine", "owner": "bob"})
    assert job.json()["result"]["owner"] == "bob"

    # A viewer sees its own (none) and cannot name anyone.
    assert search(base_url, CAROL, "secrets", q="zebra").status_code == 404
    assert search(base_url, CAROL, "secrets", q="zebra", owner="alice").status_code == 403
    # A bad owner value is the client's error, never a 500.
    for bad in ("", "x" * 201, "a\x00b"):
        assert search(base_url, ADMIN, "secrets", owner=bad).status_code == 422


def test_an_admin_reaches_any_owner_with_owner(base_url: str) -> None:
    docs = [{"id": "d1", "text": "okapi"}, {"id": "d2", "text": "okapi tapir"}]
    assert index(base_url, ALICE, {"collection": "zoo", "documents": docs}).status_code == 200
    assert search(base_url, ADMIN, "zoo", q="okapi").status_code == 404  # its own: none
    assert sorted(hit_ids(search(base_url, ADMIN, "zoo", q="okapi", owner="alice"))) == [
        "d1",
        "d2",
    ]
    job = index(base_url, ADMIN, {"collection": "zoo", "delete_ids": ["d1"], "owner": "alice"})
    assert job.json()["state"] == "completed", job.text
    assert (job.json()["result"]["owner"], job.json()["result"]["deleted"]) == ("alice", 1)
    assert hit_ids(search(base_url, ALICE, "zoo", q="okapi")) == ["d2"]
    with httpx.Client(base_url=base_url, headers=ADMIN, timeout=10) as http:
        listed = http.get("/api/v1/collections").json()["collections"]
        only_alice = http.get("/api/v1/collections", params={"owner": "alice"}).json()
    assert {"owner": "alice", "name": "zoo", "documents": 1} in listed
    assert {(c["owner"], c["name"]) for c in listed} >= {("alice", "zoo"), ("bob", "secrets")}
    assert {c["owner"] for c in only_alice["collections"]} == {"alice"}
    with httpx.Client(base_url=base_url, headers=ALICE, timeout=10) as http:
        own = http.get("/api/v1/collections").json()["collections"]
    assert {c["owner"] for c in own} == {"alice"}


def test_mcp_search_and_index_keep_to_the_callers_collections(base_url: str) -> None:
    docs = [{"id": "m1", "text": "kiwi flightless bird"}]
    assert index(base_url, ALICE, {"collection": "birds", "documents": docs}).status_code == 200

    async def call(headers: dict, tool: str, arguments: dict):
        async with connect("http", base_url=base_url, headers=headers) as client:
            return await client.call_tool(tool, arguments)

    def run(headers: dict, tool: str, arguments: dict):
        return anyio.run(call, headers, tool, arguments)

    query = {"collection": "birds", "query": "kiwi"}
    own = run(ALICE, "search", query)
    assert not own.is_error, own.content
    assert (own.structured_content["owner"], own.structured_content["hits"][0]["id"]) == (
        "alice",
        "m1",
    )
    theirs = run(BOB, "search", query)
    assert theirs.is_error and theirs.structured_content["error"]["code"] == "not_found"
    named = run(BOB, "search", {**query, "owner": "alice"})
    assert named.is_error and named.structured_content["error"]["code"] == "forbidden"
    steal = run(BOB, "index_documents", {"collection": "birds", "delete_ids": ["m1"]})
    assert not steal.is_error, steal.content
    forced = run(BOB, "index_documents", {"collection": "birds", "owner": "alice"})
    assert forced.is_error and forced.structured_content["error"]["code"] == "forbidden"
    assert hit_ids(search(base_url, ALICE, "birds", q="kiwi")) == ["m1"]
    admin = run(ADMIN, "search", {**query, "owner": "alice"})
    assert not admin.is_error and admin.structured_content["hits"][0]["id"] == "m1"
