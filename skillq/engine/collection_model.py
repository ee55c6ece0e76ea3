"""What both collection backends share: an indexing report, a search hit, the query's
words and the ranking rules, so the SQLite files (`skillq.engine.search`) and the store's
tables (`skillq.engine.stored_search`) answer alike.

Hybrid ranking, when vectors exist and an embedder is configured, is Reciprocal Rank Fusion
(score = sum over the two rankings of 1 / (60 + rank)): it needs no score calibration
between BM25 and cosine similarity.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from skillq.errors import InvalidParams
from skillq.json_values import shown

_WORD = re.compile(r"\w+")
RRF_K = 60
MAX_K = 100


@dataclass(frozen=True)
class IndexReport:
    owner: str
    collection: str
    received: int
    added: int
    updated: int
    unchanged: int
    deleted: int
    embedded: int
    total: int

    @property
    def indexed(self) -> int:
        return self.added + self.updated

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "indexed": self.indexed}


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    text: str
    metadata: dict[str, Any]
    bm25: float | None = None
    similarity: float | None = None


def content_hash(text: str, metadata: dict[str, Any]) -> str:
    canonical = json.dumps([text, metadata], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def words_of(text: str) -> list[str]:
    """The query's words; none (punctuation only) is a query that matches nothing. Refusing
    it would need clients to know which characters are letters in which Unicode version;
    an API fuzzer could not, and neither can a JSON Schema pattern (ECMA-262 `\\w` is
    ASCII)."""
    return list(dict.fromkeys(word.lower() for word in _WORD.findall(text)))[:64]


def check_unique_ids(documents: list[dict[str, Any]]) -> None:
    seen: set[str] = set()
    for i, doc in enumerate(documents):
        if doc["id"] in seen:
            raise InvalidParams(
                f"document id {shown(doc['id'])} appears twice",
                [{"path": f"documents.{i}.id", "message": "ids must be unique in a request"}],
            )
        seen.add(doc["id"])


def check_k(k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise InvalidParams("k is out of range", [{"path": "k", "message": f"1-{MAX_K}"}])


def fuse(
    bm25: dict[int, float], similarity: dict[int, float], k: int
) -> tuple[list[int], dict[int, float]]:
    """The `k` best row ids and their scores: Reciprocal Rank Fusion of the two rankings
    (each a dict in rank order) when there are vectors, else the keyword ranking."""
    if not similarity:
        return list(bm25)[:k], bm25
    fused: dict[int, float] = {}
    for ranking in (list(bm25), list(similarity)):
        for rank, rowid in enumerate(ranking, start=1):
            fused[rowid] = fused.get(rowid, 0.0) + 1.0 / (RRF_K + rank)
    return sorted(fused, key=fused.__getitem__, reverse=True)[:k], fused
