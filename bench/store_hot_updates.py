"""PostgreSQL's cost for a job's three writes, with the job table's indexes as they are and
with schema 18's (before a start became a HOT update).

    .venv/bin/python bench/store_hot_updates.py [--jobs 2000] [--rounds 3]

Each job is submitted (`jobs.insert_job`), started (`job_writes.start_pending`) and finished
(`job_writes.finish_one`) before the next, in the order a worker keeping up with its client
writes them. PostgreSQL (15 here) can update a row in place on its page, a HOT update
writing no index entry, only when no index covers a column the update changes. Since schema
19 no index covers what a start changes (`state`, `started_at`, ...); a finish changes
`completed_at`, which stays indexed (the queue history, and the open jobs as its NULL
entries). This prints the server's CPU per job (its backend process's, over the whole round)
and the write-ahead log each statement wrote (read on a second connection), for the store at
the latest schema and downgraded to 18, the two alternating within each round.

Measured with it (2026-12-01, 3,000 jobs x 3 rounds, three times): server CPU per job 1,013 /
1,103 / 1,127 µs at schema 18, 950 / 1,047 / 997 at 19 (-6 to -12 %); WAL per start 1,160 ->
347 bytes, per job 3,510 -> 2,520 (-28 %; the third run with the queued-jobs index, which
adds ~85 bytes to an INSERT). An earlier form of this script inserted every job, then
started every one, then finished every one, and found the start's server CPU halved without
the indexes (370 -> 200 µs): in a worker's order, one job after the other, the saving is that
much smaller. Those figures were taken while a start still waited for the disk; since
`storage.synchronous_starts = false` (the default, which the store here has too) and on a
machine about twice as fast (2026-12-02, 3,000 jobs x 3 rounds): 557 µs per job at schema 18,
543 at 19, WAL per start 1,160 -> 347 bytes as before.
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
import psycopg2

from skillq.storage import job_writes, jobs
from skillq.storage.database import connection, database_proxy
from skillq.storage.job_writes import FinishWrite
from skillq.storage.migrations import downgrade
from skillq.storage.models import JobState, utcnow

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `tests.support`, run as a script
from tests.support import bound_store  # noqa: E402

STEPS = ("insert", "start", "finish")
_WAL_NOW = "SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn"


def one_round(count: int, url: str) -> tuple[float, list[float]]:
    """Server CPU µs per job, and WAL bytes per INSERT, start and finish, of `count` jobs."""
    changes = {"state": JobState.COMPLETED, "result": None, "progress": 1.0}
    # The log's position is read on a second connection, whose CPU is not counted.
    watcher = psycopg2.connect(url)
    watcher.autocommit = True
    with connection(), watcher.cursor() as cursor:
        pid = database_proxy.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
        server = psutil.Process(pid)

        def wal_now() -> int:
            cursor.execute(_WAL_NOW)
            return int(cursor.fetchone()[0])

        def submit(job_id: str) -> None:
            jobs.insert_job(
                id=job_id, type="noop", queue="default", params={}, priority=5,
                max_retries=0, expires_at=utcnow() + timedelta(hours=1), owner="bench",
            )  # fmt: skip

        writes = (
            submit,
            lambda job_id: job_writes.start_pending(job_id, worker_id="bench:1"),
            lambda job_id: job_writes.finish_one(FinishWrite(job_id, 1, 0.001, changes)),
        )
        wal = [0] * len(STEPS)
        began = backend_cpu(server)
        for _ in range(count):
            job_id = str(uuid.uuid4())
            for step, write in enumerate(writes):
                before = wal_now()
                write(job_id)
                wal[step] += wal_now() - before
        cpu = backend_cpu(server) - began
    watcher.close()
    return cpu * 1e6 / count, [written / count for written in wal]


def backend_cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    figures: dict[int, list[tuple[float, list[float]]]] = {19: [], 18: []}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.rounds):
            for schema in figures:
                with bound_store("postgres", Path(folder)) as settings:
                    if schema == 18:
                        with connection():
                            downgrade(18)
                    time.sleep(0.2)
                    figures[schema].append(one_round(args.jobs, settings.url))
    for schema, rounds in figures.items():
        cpu = statistics.median(cpu for cpu, _ in rounds)
        wal = [statistics.median(written[step] for _, written in rounds) for step in range(3)]
        steps = "  ".join(f"{name} {bytes_:5.0f}" for name, bytes_ in zip(STEPS, wal, strict=True))
        print(f"schema {schema}: server CPU {cpu:4.0f} µs per job; WAL bytes {steps}")


if __name__ == "__main__":
    main()
