"""Indexing throughput and search latency of skillq collections, next to bm25s.

Run by hand; it prints and asserts nothing:

    .venv/bin/python bench/search.py [--docs 10000] [--queries 1000]

The corpus is synthetic and deterministic: documents of 40-80 words drawn from a Zipf-like
distribution over a 20,000-word vocabulary, so a few words are in most documents and most
words are rare, as in real text. Queries are 1-3 words taken from random documents.

Rows, each measured in this one run:
  - skillq (SQLite FTS5, one file, persisted): first index of every document; a second run
    of the same corpus with 1 % of the documents changed (only those are re-indexed); BM25
    search per query, k=10, each search opening the collection file as the API does;
  - the same searches over HTTP (`GET /api/v1/collections/bench/search`), from the API run
    as `skillq api` on 127.0.0.1 with one keep-alive httpx client;
  - with `--local-embeddings`, only skillq's hybrid search (BM25 fused with all-MiniLM-L6-v2
    vectors computed on the CPU), for the cost of vectors;
  - with `--postgres URL` (e.g. postgresql://127.0.0.1:5432/test), the same runs on the
    PostgreSQL store (`skillq.engine.stored_search`, in a schema of its own, dropped after);
  - bm25s (the peer, in memory, `pip install bm25s`): index build; a rebuild for the same
    1 % change (bm25s cannot update an index in place); search per query, k=10.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from skillq.engine.search import Collections

ROOT = Path(__file__).resolve().parents[1]

VOCABULARY = 20_000


def make_corpus(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(VOCABULARY)]
    weights = [1 / (rank + 1) for rank in range(VOCABULARY)]
    return [
        {
            "id": f"doc-{i}",
            "text": " ".join(rng.choices(words, weights, k=rng.randint(40, 80))),
            "metadata": {"n": i},
        }
        for i in range(n)
    ]


def make_queries(docs: list[dict[str, Any]], n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    queries = []
    for _ in range(n):
        words = rng.choice(docs)["text"].split()
        queries.append(" ".join(rng.sample(words, rng.randint(1, 3))))
    return queries


def percentiles(samples_ms: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples_ms, n=100, method="inclusive")
    return cuts[49], cuts[98]


#: The owner the API gives a caller in auth mode `none`, so `bench_http` finds the collection.
OWNER = "local"


def changed(docs: list[dict[str, Any]], fraction: float) -> list[dict[str, Any]]:
    docs = list(docs)
    for i in range(0, len(docs), int(1 / fraction)):
        docs[i] = {**docs[i], "text": docs[i]["text"] + " revised"}
    return docs


def bench_skillq(
    docs: list, queries: list[str], root: Path, embedder: Any = None
) -> dict[str, Any]:
    collections = Collections(root, embedder)
    row = bench_collections(collections, docs, queries)
    row["size_mb"] = collections.path("bench", owner=OWNER).stat().st_size / 2**20
    return row


def bench_postgres(docs: list, queries: list[str], url: str) -> dict[str, Any]:
    """The same runs on the PostgreSQL store, in a schema made for the run and dropped."""
    import uuid

    import psycopg2

    from skillq.engine.stored_search import StoredCollections
    from skillq.storage import bind_database, open_database
    from skillq.storage.migrations import upgrade

    schema = f"skillq_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(url)
    admin.autocommit = True
    admin.cursor().execute(f"CREATE SCHEMA {schema}")
    database = bind_database(
        open_database("postgres", url=f"{url}?options=-csearch_path%3D{schema}")
    )
    try:
        upgrade()
        return bench_collections(StoredCollections(), docs, queries)
    finally:
        database.close_all()
        admin.cursor().execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()


def bench_collections(collections: Any, docs: list, queries: list[str]) -> dict[str, Any]:
    started = time.perf_counter()
    first = collections.index("bench", docs, owner=OWNER)
    index_secs = time.perf_counter() - started
    update = changed(docs, 0.01)
    started = time.perf_counter()
    second = collections.index("bench", update, owner=OWNER)
    update_secs = time.perf_counter() - started
    for query in queries[:50]:  # warm the page cache
        collections.search("bench", query, 10, owner=OWNER)
    samples = []
    for query in queries:
        started = time.perf_counter()
        collections.search("bench", query, 10, owner=OWNER)
        samples.append((time.perf_counter() - started) * 1000)
    return {
        "index_secs": index_secs,
        "indexed": first.indexed,
        "update_secs": update_secs,
        "reindexed": second.indexed,
        "latency": percentiles(samples),
    }


def bench_http(queries: list[str], data_dir: Path) -> tuple[float, float]:
    """Search latency through the API process, which reads the collection the bench wrote."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = data_dir / "settings.toml"
    settings.write_text(
        f'[server]\nport = {port}\ndata_dir = "{data_dir}"\n[search]\npath = "{data_dir}"\n'
    )
    env = dict(os.environ, SKILLQ_SETTINGS=str(settings))
    log = (data_dir / "api.log").open("wb")
    command = [sys.executable, "-m", "skillq", "api", "--port", str(port)]
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        sys.exit((data_dir / "api.log").read_text())
                    time.sleep(0.1)
            url = "/api/v1/collections/bench/search"
            for query in queries[:50]:
                client.get(url, params={"q": query, "k": 10}).raise_for_status()
            samples = []
            for query in queries:
                started = time.perf_counter()
                client.get(url, params={"q": query, "k": 10}).raise_for_status()
                samples.append((time.perf_counter() - started) * 1000)
        return percentiles(samples)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def bench_bm25s(docs: list, queries: list[str]) -> dict[str, Any] | None:
    try:
        import bm25s
    except ImportError:
        return None

    def build(corpus: list[dict[str, Any]]) -> Any:
        retriever = bm25s.BM25()
        retriever.index(
            bm25s.tokenize([d["text"] for d in corpus], show_progress=False), show_progress=False
        )
        return retriever

    started = time.perf_counter()
    retriever = build(docs)
    index_secs = time.perf_counter() - started
    started = time.perf_counter()
    build(changed(docs, 0.01))
    update_secs = time.perf_counter() - started
    samples = []
    for query in queries:
        started = time.perf_counter()
        tokens = bm25s.tokenize([query], show_progress=False)
        retriever.retrieve(tokens, k=10, show_progress=False)
        samples.append((time.perf_counter() - started) * 1000)
    return {
        "index_secs": index_secs,
        "indexed": len(docs),
        "update_secs": update_secs,
        "reindexed": len(docs),
        "latency": percentiles(samples),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument(
        "--local-embeddings",
        action="store_true",
        help="only measure hybrid search with the local MiniLM model (skillq[local-embeddings])",
    )
    parser.add_argument("--postgres", metavar="URL", help="also measure the PostgreSQL store")
    args = parser.parse_args()
    docs = make_corpus(args.docs)
    queries = make_queries(docs, args.queries)
    print(
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{args.docs} documents, {args.queries} queries, k=10\n"
    )
    if args.local_embeddings:
        from skillq.engine.embeddings import LocalEmbedder

        with tempfile.TemporaryDirectory() as tmp:
            row = bench_skillq(docs, queries, Path(tmp), LocalEmbedder())
        p50, p99 = row["latency"]
        print(f"{'':34}{'index docs/s':>14}{'1% update s':>13}{'search p50 ms':>15}{'p99 ms':>9}")
        print(
            f"{'skillq hybrid (BM25 + MiniLM)':34}{row['indexed'] / row['index_secs']:>14,.0f}"
            f"{row['update_secs']:>13.3f}{p50:>15.3f}{p99:>9.3f}"
        )
        return
    with tempfile.TemporaryDirectory() as tmp:
        ours = bench_skillq(docs, queries, Path(tmp))
        http = bench_http(queries, Path(tmp))
    stored = bench_postgres(docs, queries, args.postgres) if args.postgres else None
    peer = bench_bm25s(docs, queries)
    header = f"{'':34}{'index docs/s':>14}{'1% update s':>13}{'re-indexed':>12}"
    print(header + f"{'search p50 ms':>15}{'p99 ms':>9}")
    rows = [("skillq (SQLite FTS5, on disk)", ours), ("bm25s (in memory)", peer)]
    if stored is not None:
        rows.insert(1, ("skillq (PostgreSQL store)", stored))
    for name, row in rows:
        if row is None:
            print(f"{name:34}not installed (pip install bm25s)")
            continue
        p50, p99 = row["latency"]
        print(
            f"{name:34}{row['indexed'] / row['index_secs']:>14,.0f}{row['update_secs']:>13.3f}"
            f"{row['reindexed']:>12,}{p50:>15.3f}{p99:>9.3f}"
        )
    print(f"{'skillq over HTTP (skillq api)':34}{'':>39}{http[0]:>15.3f}{http[1]:>9.3f}")
    print(f"\nskillq collection file: {ours['size_mb']:.1f} MiB")
    if peer is not None:
        print(
            "ratios skillq/bm25s: "
            f"indexing {peer['index_secs'] / ours['index_secs']:.2f}x as fast, "
            f"1% update {peer['update_secs'] / ours['update_secs']:.1f}x as fast, "
            f"search p50 {ours['latency'][0] / peer['latency'][0]:.2f}x the time"
        )


if __name__ == "__main__":
    main()
