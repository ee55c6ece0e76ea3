"""What keeping job logs costs a worker, per job: skillq's middleware stack with and without
`JobLogs`, on a real store (SQLite in a temporary directory, or `--postgres URL`).

Run by hand from the repository root; it prints and asserts nothing:

    .venv/bin/python bench/job_logs.py [--jobs 2000] [--lines 0 10] [--rounds 3]
    .venv/bin/python bench/job_logs.py --postgres postgresql://postgres@127.0.0.1/test

Each round queues `--jobs` jobs through the coordinator on a StubBroker, then times one
in-process dramatiq worker (4 threads) draining them, once per variant, variants taking
turns to go first so drift and order hit both alike. A job logs `--lines` INFO lines;
"without" runs the same stack minus `JobLogs`, where those records go nowhere. On
PostgreSQL the tables live in a schema of their own, dropped at the end. Printed: the
median time per job of each variant and the difference, what a job pays for its log.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dramatiq
from dramatiq.brokers.stub import StubBroker

from skillq.brokers.factory import job_middleware
from skillq.brokers.job_logs import JobLogs
from skillq.jobs.coordinator import JobCoordinator
from skillq.jobs.types import JobTypeOptions
from skillq.settings import Settings, WorkerSettings
from skillq.storage import JobState, bind_database, open_database
from skillq.storage.database import connection
from skillq.storage.migrations import upgrade
from skillq.storage.models import Job

WORKERS = WorkerSettings(max_retries=0, retry_delay_secs=0, heartbeat_secs=5)
logger = logging.getLogger("bench.job_logs")


def drain(with_logs: bool, jobs: int, lines: int) -> float:
    """Seconds per job for one worker to run `jobs` jobs that log `lines` lines each."""
    stack = job_middleware(WORKERS)
    if not with_logs:
        stack = [m for m in stack if not isinstance(m, JobLogs)]
    broker = StubBroker(middleware=[*stack, JobTypeOptions()])

    @dramatiq.actor(broker=broker, queue_name="default", params_schema={"type": "object"})
    def talk(lines: int) -> None:
        for n in range(lines):
            logger.info("line %d of %d", n, lines)

    coordinator = JobCoordinator(broker, Settings(workers=WORKERS))
    ids = [
        coordinator.submit_job({"type": "talk", "params": {"lines": lines}}).job.id
        for _ in range(jobs)
    ]
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=10)
    started = time.perf_counter()
    worker.start()
    while True:
        with connection():
            done = Job.select().where(Job.id.in_(ids) & (Job.state == JobState.COMPLETED)).count()
        if done == jobs:
            break
        time.sleep(0.005)
    elapsed = time.perf_counter() - started
    worker.stop()
    broker.close()
    return elapsed / jobs


@contextlib.contextmanager
def _postgres_schema(url: str | None) -> Iterator[str | None]:
    """A fresh schema on the server at `url` (none for SQLite), dropped afterwards."""
    if not url:
        yield None
        return
    import psycopg2

    schema = f"bench_job_logs_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(url)
    conn.autocommit = True
    conn.cursor().execute(f"CREATE SCHEMA {schema}")
    try:
        separator = "&" if "?" in url else "?"
        yield f"{url}{separator}options=-csearch_path%3D{schema}"
    finally:
        conn.cursor().execute(f"DROP SCHEMA {schema} CASCADE")
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--lines", type=int, nargs="+", default=[0, 10])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--postgres", help="a PostgreSQL URL (default: SQLite in a temp dir)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger().handlers[0].setLevel(logging.WARNING)  # the job's lines print nowhere
    logger.setLevel(logging.INFO)
    with tempfile.TemporaryDirectory() as directory, _postgres_schema(args.postgres) as url:
        if url:
            database = open_database("postgres", url=url)
        else:
            database = open_database("sqlite", path=Path(directory) / "jobs.db")
        bind_database(database)
        upgrade()
        store = "PostgreSQL" if args.postgres else "SQLite"
        print(f"{store} store, {args.jobs} jobs per run, {args.rounds} rounds, ms per job (median)")
        print(f"{'lines/job':>10}{'without':>10}{'with':>10}{'added':>10}")
        for lines in args.lines:
            timings: dict[bool, list[float]] = {False: [], True: []}
            for round_ in range(args.rounds):
                # Each variant goes first in every other round: order effects cancel out.
                for with_logs in (False, True) if round_ % 2 else (True, False):
                    timings[with_logs].append(drain(with_logs, args.jobs, lines))
            without, with_ = (statistics.median(timings[v]) * 1000 for v in (False, True))
            print(f"{lines:>10}{without:>10.3f}{with_:>10.3f}{with_ - without:>10.3f}")


if __name__ == "__main__":
    main()
