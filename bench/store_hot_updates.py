"""PostgreSQL's CPU for a worker's two writes per job, with the job table's indexes as they are
and without those on the columns the writes change.

    .venv/bin/python bench/store_hot_updates.py [--jobs 2000] [--rounds 3]

A worker starts a job (`job_writes.start_pending`) and finishes it (`job_writes.finish_one`):
each an UPDATE of one row by its key. PostgreSQL (15 here) can update a row in place on its
page, a HOT update touching no index, only when no index covers a column the update changes;
the start and the finish change `state`, `started_at` and `completed_at`, which three indexes
cover (`state, priority, created_at`; `started_at`; `completed_at`; before schema 18 also
`state` alone), so every write adds an entry to each of the table's eleven indexes. This
measures what that costs the server: the CPU time of the store's own connection (its backend
process), per statement, for the store as it is and for the same store without the indexes on
those columns (the writes then HOT), the two alternating within each round. The store's
queries that need them are not measured: this says what a schema whose job state writes
avoid them would save, not that dropping them is right.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

import psutil

from skillq.storage import job_writes, jobs
from skillq.storage.database import connection, database_proxy
from skillq.storage.job_writes import FinishWrite
from skillq.storage.models import JobState, utcnow

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `tests.support`, run as a script
from tests.support import bound_store  # noqa: E402

#: The columns a start or a finish changes that the job table indexes.
CHANGED = ("state", "started_at", "completed_at")
_INDEXES_ON_CHANGED = """
SELECT DISTINCT i.relname FROM pg_index x
JOIN pg_class t ON t.oid = x.indrelid JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = ANY(x.indkey)
WHERE t.relname = 'skillq_job' AND t.relnamespace = current_schema()::regnamespace
AND a.attname = ANY(%s)
"""


def backend_cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def one_round(count: int) -> tuple[float, float]:
    """Server CPU µs per start and per finish of `count` new jobs, on one connection."""
    with connection():
        pid = database_proxy.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
        server = psutil.Process(pid)
        ids = []
        for _ in range(count):
            job = jobs.insert_job(
                id=str(uuid.uuid4()), type="noop", queue="default", params={}, priority=5,
                max_retries=0, expires_at=utcnow() + timedelta(hours=1), owner="bench",
            )  # fmt: skip
            ids.append(job.id)
        began = backend_cpu(server)
        for job_id in ids:
            job_writes.start_pending(job_id, worker_id="bench:1")
        started = backend_cpu(server)
        changes = {"state": JobState.COMPLETED, "result": None, "progress": 1.0}
        for job_id in ids:
            job_writes.finish_one(FinishWrite(job_id, 1, 0.001, changes))
        finished = backend_cpu(server)
    return (started - began) * 1e6 / count, (finished - started) * 1e6 / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    figures: dict[str, list[tuple[float, float]]] = {"as it is": [], "without": []}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.rounds):
            for variant in figures:
                with bound_store("postgres", Path(folder)):
                    if variant == "without":
                        with connection():
                            cursor = database_proxy.execute_sql(
                                _INDEXES_ON_CHANGED, (list(CHANGED),)
                            )
                            names = [name for (name,) in cursor.fetchall()]
                            for name in names:
                                database_proxy.execute_sql(f'DROP INDEX "{name}"')
                    time.sleep(0.2)
                    figures[variant].append(one_round(args.jobs))
    for variant, rows in figures.items():
        start, finish = (statistics.median(column) for column in zip(*rows, strict=True))
        label = (
            "indexes as they are" if variant == "as it is" else "no index on " + "/".join(CHANGED)
        )
        print(f"{label:42} start {start:5.0f} µs  finish {finish:5.0f} µs  (server CPU)")


if __name__ == "__main__":
    main()
