"""Finish writes of eight threads, each alone (as before) against group-committed, on each store.

    .venv/bin/python bench/finish_batches.py [--jobs 4000] [--threads 8] [--rounds 3]

Every job is started first; then the threads end them as fast as they can, either with
`job_writes.finish_one` (one transaction per job) or through `storage.finish_batches` (threads
that finish while a write is in flight commit together). Prints, per store and mode, the
median over the rounds of: jobs/s, the process's CPU time per job, on PostgreSQL the local
server's CPU time per job too (all its processes: run it on a quiet machine), and
transactions per job (counted by `FinishBatches`; alone, one per job). The modes alternate
within each round so load spreads over both; CPU per job and transactions per job matter more
than jobs/s on a loaded machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from skillq.storage import job_writes, jobs
from skillq.storage.database import connection
from skillq.storage.finish_batches import FinishBatches
from skillq.storage.job_writes import FinishWrite
from skillq.storage.models import JobState, utcnow

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `tests.support`, run as a script
sys.path.insert(0, str(ROOT / "bench"))
from e2e_cpu import servers  # noqa: E402
from side_by_side_run import cpu_secs  # noqa: E402

from tests.support import bound_store  # noqa: E402


def _started(count: int) -> list[str]:
    ids = []
    with connection():
        for _ in range(count):
            job = jobs.insert_job(
                id=str(uuid.uuid4()), type="noop", queue="default", params={}, priority=5,
                max_retries=0, expires_at=utcnow() + timedelta(hours=1), owner="bench",
            )  # fmt: skip
            job_writes.start_pending(job.id, worker_id="bench:1")
            ids.append(job.id)
    return ids


def _run(ids: list[str], threads: int, finish: Callable[[FinishWrite], object]) -> float:
    """Seconds for `threads` threads to end `ids` with `finish`."""
    share = [ids[i::threads] for i in range(threads)]
    changes = {"state": JobState.COMPLETED, "result": None, "progress": 1.0}

    def end(mine: list[str]) -> None:
        for job_id in mine:
            with connection():
                finish(FinishWrite(job_id, 1, 0.001, changes))

    workers = [threading.Thread(target=end, args=(mine,)) for mine in share]
    began = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return time.perf_counter() - began


def _postgres_cpu_secs() -> float:
    """CPU seconds used so far by the local PostgreSQL server's processes, listed anew at each
    call: a backend the threads' connections start during the run counts too."""
    return cpu_secs(servers()["postgres"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for backend in ("sqlite", "postgres"):
        figures: dict[str, list[tuple[float, float, float, float]]] = {"alone": [], "batched": []}
        with tempfile.TemporaryDirectory() as folder, bound_store(backend, Path(folder)):
            for _ in range(args.rounds):
                for mode in figures:
                    ids = _started(args.jobs)
                    batches = FinishBatches()
                    finish = job_writes.finish_one if mode == "alone" else batches.finish
                    cpu, server = time.process_time(), _postgres_cpu_secs()
                    seconds = _run(ids, args.threads, finish)
                    cpu, server = time.process_time() - cpu, _postgres_cpu_secs() - server
                    commits = batches.transactions if mode == "batched" else args.jobs
                    figures[mode].append(
                        (
                            args.jobs / seconds,
                            cpu * 1000 / args.jobs,
                            server * 1000 / args.jobs,
                            commits / args.jobs,
                        )
                    )
        for mode, rows in figures.items():
            rate, cpu_ms, server_ms, commits = (
                statistics.median(column) for column in zip(*rows, strict=True)
            )
            print(
                f"{backend:8} {mode:8} {rate:8.0f} jobs/s  {cpu_ms:.3f} ms CPU/job"
                + (f"  server {server_ms:.3f} ms CPU/job" if backend == "postgres" else "")
                + f"  {commits:.3f} transactions/job"
            )


if __name__ == "__main__":
    main()
