"""Remote HTTP workers against a local worker: jobs/s per worker and added latency per job.

Run by hand; it prints and asserts nothing:

    .venv/bin/python bench/remote_workers.py                    # Redis + PostgreSQL
    .venv/bin/python bench/remote_workers.py --broker sqlite    # the embedded default
    .venv/bin/python bench/remote_workers.py --jobs 400 --threads 4

One API process; then, one at a time, one local worker (`skillq worker --queue default`)
and one remote worker (`skillq worker --remote`), each with `--threads` threads, in the same
run. For each: the throughput of a batch of no-op `sleep` jobs (submitted at once, timed
until the last completes) and the end-to-end latency of single jobs run one after another
(submit to `completed_at`, from the job's own timestamps, split at `started_at`: the wait
for a worker to take the job, and its run with the outcome's report). The difference of the medians
is what the HTTP hop adds per job: the fetch, the claim and the report.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.reliability import Stack  # noqa: E402
from tests.support import (  # noqa: E402
    ChildProcess,
    child_env,
    create_postgres_schema,
    drop_postgres_schema,
    postgres_schema_url,
    wait_for,
    write_settings,
)

NOOP = {"type": "sleep", "params": {"seconds": 0, "steps": 1}}


def _throughput(stack: Stack, count: int) -> float:
    started = time.perf_counter()
    ids = [stack.submit(NOOP)["id"] for _ in range(count)]
    for job_id in ids:
        wait_for(lambda j=job_id: stack.job(j)["state"] == "completed", timeout=600)
    return count / (time.perf_counter() - started)


def _latencies(stack: Stack, count: int) -> list[tuple[float, float]]:
    """(submit to start, start to completion) of each job, in milliseconds."""
    latencies = []
    for _ in range(count):
        job = stack.submit(NOOP)
        done = wait_for(
            lambda j=job["id"]: (d := stack.job(j))["state"] == "completed" and d, timeout=60
        )
        created, started, completed = (
            datetime.fromisoformat(done[field])
            for field in ("created_at", "started_at", "completed_at")
        )
        latencies.append(
            (
                (started - created).total_seconds() * 1000,
                (completed - started).total_seconds() * 1000,
            )
        )
    return latencies


def _remote(stack: Stack, directory: Path, threads: int) -> ChildProcess:
    command = ["-m", "skillq", "auth", "worker-token", "create", "bench", "--queues", "default"]
    token = subprocess.run(
        [sys.executable, *command],
        cwd=ROOT,
        env=child_env(stack.settings_path),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    remote_dir = directory / "remote"
    remote_dir.mkdir()
    settings = write_settings(remote_dir, {"server": {"data_dir": str(remote_dir / "data")}})
    args = ["-m", "skillq", "worker", "--remote", stack.base_url, "--token", token]
    remote = ChildProcess("remote", [*args, "--threads", str(threads)], settings, directory)
    wait_for(lambda: remote.logged("is ready") or not remote.alive(), timeout=60)
    assert remote.alive(), remote.log()
    return remote


def _row(name: str, rate: float, latencies: list[tuple[float, float]]) -> tuple:
    total = [wait + run for wait, run in latencies]
    return (
        name,
        rate,
        statistics.median(total),
        statistics.quantiles(total, n=20)[-1],
        statistics.median(wait for wait, _ in latencies),
        statistics.median(run for _, run in latencies),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", choices=["redis", "rabbitmq", "sqlite"], default="redis")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--latency-jobs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    options = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="skillq-bench-remote-"))
    schema = None
    extra = {}
    if options.broker != "sqlite":
        schema = create_postgres_schema()
        extra["storage"] = {"backend": "postgres", "url": postgres_schema_url(schema)}
    stack = Stack.create(options.broker, directory, extra=extra)
    rows = []
    try:
        stack.start_api()
        local = stack.start_worker(threads=options.threads, queue="default")
        _latencies(stack, 5)  # warm-up
        rows.append(
            _row(
                "local worker",
                _throughput(stack, options.jobs),
                _latencies(stack, options.latency_jobs),
            )
        )
        stack.stop_worker(local)
        remote = _remote(stack, directory, options.threads)
        try:
            _latencies(stack, 5)
            rows.append(
                _row(
                    "remote worker",
                    _throughput(stack, options.jobs),
                    _latencies(stack, options.latency_jobs),
                )
            )
        finally:
            remote.stop()
    finally:
        stack.close()
        if schema is not None:
            drop_postgres_schema(schema)
    store = "SQLite" if options.broker == "sqlite" else "PostgreSQL"
    print(f"{options.broker} + {store}, {options.threads} threads per worker, no-op jobs")
    print(f"{'':16} {'jobs/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'wait p50':>9} {'run p50':>8}")
    for name, rate, p50, p95, wait, run in rows:
        print(f"{name:16} {rate:8.1f} {p50:8.1f} {p95:8.1f} {wait:9.1f} {run:8.1f}")
    if len(rows) == 2:
        print(f"added latency per job (p50): {rows[1][2] - rows[0][2]:+.1f} ms;")
        print(f"remote throughput / local: {rows[1][1] / rows[0][1]:.2f}")


if __name__ == "__main__":
    main()
