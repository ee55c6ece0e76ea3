"""What counting a job in the store costs a worker: the finish of a job with and without it.

    .venv/bin/python bench/job_metrics.py [--jobs 2000] [--backend sqlite|postgres]

A worker finishes each job with one conditional UPDATE; with job metrics, that UPDATE returns
the job's type and one upsert, in the same transaction, counts the outcome and records the
attempt's run time. Both are timed here on the same store, one after the other, and the
ratio printed.
PostgreSQL uses the `test` database on 127.0.0.1 (a schema of its own, dropped after).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from skillq.storage import Job, JobState, job_metrics, jobs
from skillq.storage.models import utcnow
from tests.support import bound_store


def _jobs(count: int) -> list[str]:
    ids = []
    for _ in range(count):
        job_id = str(uuid.uuid4())
        jobs.insert_job(
            id=job_id,
            type="sleep",
            queue="default",
            params={},
            priority=5,
            max_retries=0,
            expires_at=utcnow(),
            owner="local",
            trace_id=None,
            idempotency_key=None,
        )
        jobs.mark_running(job_id, attempt=1, worker_id="bench:1")
        ids.append(job_id)
    return ids


def _finish_uncounted(job_id: str) -> None:
    """The finish as it was before job metrics: one conditional UPDATE."""
    Job.update(
        state=JobState.COMPLETED,
        result=None,
        progress=1.0,
        completed_at=utcnow(),
        heartbeat_at=None,
    ).where((Job.id == job_id) & (Job.state == JobState.RUNNING) & (Job.attempts == 1)).execute()


def _finish_counted(job_id: str) -> None:
    """As `JobStatus` does it: the outcome, then its count and run time in one upsert."""
    jobs.mark_completed(job_id, attempt=1, result=None, run_seconds=0.3)


def _time(finish, ids: list[str]) -> float:
    started = time.perf_counter()
    for job_id in ids:
        finish(job_id)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory, bound_store(args.backend, Path(directory)):
        plain = _time(_finish_uncounted, _jobs(args.jobs))
        counted = _time(_finish_counted, _jobs(args.jobs))
        assert job_metrics.counters()[("completed", "sleep")] == args.jobs
    per_plain, per_counted = plain / args.jobs * 1e6, counted / args.jobs * 1e6
    print(
        f"{args.backend}: finishing a job {per_plain:.0f} us without metrics, "
        f"{per_counted:.0f} us with ({per_counted / per_plain:.2f}x, "
        f"+{per_counted - per_plain:.0f} us per job)"
    )


if __name__ == "__main__":
    main()
