"""skillq alone, on the embedded default: latency with a full store, API RSS, and a wide fan-out.

    .venv/bin/python bench/store_scale.py [--rows 1000000] [--sleepers 1000] [--processes 1]
    (--rows 0: the sleepers only)

1. Submit (POST /api/v1/jobs) and status (GET /api/v1/jobs/{id}) p50/p99 over HTTP, one
   keep-alive client, no worker running, against two APIs side by side: one on an empty
   store, one on a store holding `--rows` finished jobs (bulk-inserted with one executemany,
   timed). The two are measured in alternating rounds (`--rounds`, each in a shuffled order)
   so that whatever else the machine does lands on both; each store's own submits queue up
   in it alike. The APIs' RSS is read at the end. Target: the full store within 20 % of the
   empty one.
2. `--sleepers` jobs that each sleep 2 s, submitted over HTTP to `skillq worker --queue
   default` (`--processes`, default 1, x 256 threads): seconds from the first submit until
   the store shows every one completed, and how long the submits took. Target: <= 10 s.
   More processes boot while the submits run and slow them down on 2 cores.
Prints only. `bench/side_by_side.py` runs it after its table.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.http_api import (  # noqa: E402
    free_port,
    p,
    start_api,
    stop_api,
    timed,
    wait_until_healthy,
)
from skillq.storage.models import Job  # noqa: E402

THREADS = 256


def write_settings(data_dir: Path, port: int, processes: int) -> Path:
    text = (
        f'[server]\nhost = "127.0.0.1"\nport = {port}\ndata_dir = "{data_dir}"\n'
        f"[storage]\npool_size = {THREADS + 8}\n"
        f"[workers]\ndefault_workers = {THREADS}\nprocesses = {processes}\n"
    )
    path = data_dir / "settings.toml"
    path.write_text(text)
    return path


def latency_round(
    client: httpx.Client, ids: list[str], submits: int, reads: int
) -> tuple[list[float], list[float]]:
    """Milliseconds per submit and per status read; the reads cycle over `ids`, to which the
    round's submits are added."""
    body = {"type": "sleep", "params": {"seconds": 0}}

    def submit(_: int) -> None:
        response = client.post("/api/v1/jobs", json=body)
        response.raise_for_status()
        ids.append(response.json()["id"])

    def status(i: int) -> None:
        client.get(f"/api/v1/jobs/{ids[i % len(ids)]}").raise_for_status()

    return timed(submit, submits), timed(status, reads)


def fill(db: Path, rows: int) -> float:
    """Bulk-insert `rows` completed jobs; seconds taken."""
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA synchronous=OFF")  # a bench fixture: no need to survive a power cut
    conn.execute("PRAGMA cache_size=-262144")  # 256 MiB for the indexes being built
    columns = [r[1] for r in conn.execute('PRAGMA table_info("skillq_job")')]
    now = datetime.now(UTC).replace(tzinfo=None)
    # Every column the model gives a default (columns added by later schemas, such as
    # `waiting`, are NOT NULL): an explicit NULL would break the insert.
    values = {
        field.column_name: field.default() if callable(field.default) else field.default
        for field in Job._meta.sorted_fields
        if field.default is not None
    }
    values |= {
        "type": "sleep", "queue": "default", "params": '{"seconds":0}', "state": "completed",
        "priority": 5, "progress": 1.0, "result": '{"slept_secs":0}', "attempts": 1,
        "max_retries": 3, "owner": "local", "worker_id": "bench:1",
    }  # fmt: skip
    started = time.perf_counter()

    def row(i: int) -> tuple:
        at = str(now - timedelta(seconds=rows - i))
        stamps = {"created_at": at, "started_at": at, "completed_at": at,
                  "expires_at": str(now + timedelta(days=30))}  # fmt: skip
        return tuple(
            str(uuid.UUID(int=i)) if c == "id" else stamps.get(c, values.get(c)) for c in columns
        )

    marks = ", ".join("?" for _ in columns)
    with conn:
        conn.executemany(
            f'INSERT INTO "skillq_job" ({", ".join(columns)}) VALUES ({marks})',
            (row(i) for i in range(rows)),
        )
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - started


def started_api(data_dir: Path, label: str, processes: int) -> tuple[subprocess.Popen, str]:
    """An API on a store of its own in `data_dir` (its schema made as it boots), healthy."""
    port = free_port()
    os.environ["SKILLQ_SETTINGS"] = str(write_settings(data_dir, port, processes))
    log = data_dir / f"api-{label}.log"
    server = start_api(port, log)
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=url, timeout=30) as client:
        wait_until_healthy(client, server, log)
    return server, url


def sleepers(data_dir: Path, port: int, count: int) -> float:
    log = data_dir / "api-sleepers.log"
    server = start_api(port, log)
    worker_log = (data_dir / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "skillq", "worker", "--queue", "default"],
        cwd=ROOT, stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            wait_until_healthy(client, server, log)
            deadline = time.monotonic() + 120
            while "Worker process is ready" not in (data_dir / "worker.log").read_text():
                if time.monotonic() > deadline:
                    sys.exit("the worker did not boot")
                time.sleep(0.2)
            time.sleep(2)  # every process of the pool up
            body = {"type": "sleep", "params": {"seconds": 2, "steps": 1}}
            started = time.time()
            for _ in range(count):
                client.post("/api/v1/jobs", json=body).raise_for_status()
            print(f"{count} jobs submitted over HTTP in {time.time() - started:.1f} s")
        conn = sqlite3.connect(data_dir / "jobs.db")
        query = "SELECT COUNT(*), MAX(completed_at) FROM skillq_job WHERE state = 'completed'"
        while (row := conn.execute(query).fetchone())[0] < count:
            time.sleep(0.2)
        last = row[1]
        conn.close()
        return datetime.fromisoformat(last).replace(tzinfo=UTC).timestamp() - started
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(timeout=60)
        server.terminate()
        server.wait(timeout=20)


def latency_run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="skillq-scale-") as tmp:
        empty_dir, full_dir = Path(tmp) / "empty", Path(tmp) / "full"
        empty_dir.mkdir()
        full_dir.mkdir()
        server, _ = started_api(full_dir, "schema", args.processes)
        stop_api(server)
        fill_secs = fill(full_dir / "jobs.db", args.rows)
        # The fill's pages reach the disk now, not while a round is measured (its first round
        # had status reads of 3-18 ms while the kernel wrote them back).
        os.sync()
        servers = {}
        try:
            for label, data_dir in (("empty", empty_dir), ("full", full_dir)):
                servers[label] = started_api(data_dir, label, args.processes)
            samples = {label: {"submit": [], "status": []} for label in servers}
            ids: dict[str, list[str]] = {label: [] for label in servers}
            clients = {label: httpx.Client(base_url=url, timeout=30)
                       for label, (_, url) in servers.items()}  # fmt: skip
            for label in servers:  # a round each, not counted: the full store's pages read in
                latency_round(clients[label], ids[label], 50, args.reads // args.rounds)
            for _ in range(args.rounds):
                for label in random.sample(sorted(servers), len(servers)):
                    submits, reads = latency_round(
                        clients[label], ids[label], args.submits // args.rounds,
                        args.reads // args.rounds,
                    )  # fmt: skip
                    samples[label]["submit"] += submits
                    samples[label]["status"] += reads
            rss = {label: psutil.Process(server.pid).memory_info().rss / 2**20
                   for label, (server, _) in servers.items()}  # fmt: skip
            for client in clients.values():
                client.close()
        finally:
            for server, _ in servers.values():
                stop_api(server)
        print(f"# store scale, embedded default (SQLite), {os.cpu_count()} cores,"
              f" {args.rounds} alternating rounds")  # fmt: skip
        print(f"| REST API, p50/p99 ms | empty store | {args.rows:,} finished jobs | ratio |")
        print("|---|---|---|---|")
        for key in ("submit", "status"):
            empty, full = samples["empty"][key], samples["full"][key]
            e50, e99, f50, f99 = p(empty, 50), p(empty, 99), p(full, 50), p(full, 99)
            print(f"| {key} | {e50:.2f} / {e99:.2f} | {f50:.2f} / {f99:.2f} |"
                  f" {f50 / e50:.2f} / {f99 / e99:.2f} |")  # fmt: skip
        print(f"| API RSS, MB | {rss['empty']:.0f} | {rss['full']:.0f} | |")
        print(f"\n{args.rows:,} rows bulk-inserted in {fill_secs:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--sleepers", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--submits", type=int, default=1000)
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.rows:  # --rows 0: the sleepers only
        latency_run(args)
    if args.sleepers:
        # A fresh store: the latency runs left their jobs queued.
        with tempfile.TemporaryDirectory(prefix="skillq-sleepers-") as tmp:
            data_dir, port = Path(tmp), free_port()
            os.environ["SKILLQ_SETTINGS"] = str(write_settings(data_dir, port, args.processes))
            secs = sleepers(data_dir, port, args.sleepers)
            print(
                f"{args.sleepers} jobs sleeping 2 s, {args.processes} x {THREADS} threads:"
                f" all completed {secs:.1f} s after the first submit (target <= 10 s)"
            )


if __name__ == "__main__":
    main()
