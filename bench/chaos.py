"""Chaos run: break a running skillq system and count what survives, per broker.

For each broker: an API and a worker (real processes, loopback only) run a few hundred
`chaos_probe` jobs, each recording every execution it begins and ends; meanwhile the worker is
SIGKILLed twice mid-run (a new one started each time), the API is restarted, and the broker
server (Redis, RabbitMQ) is restarted. Then it waits for every job to end and prints: jobs
accepted, completed, lost (not terminal, or without its side effect), run twice (and how many
of those had no killed worker to explain them), and the recovery time after each SIGKILL (from
the kill until every job the dead worker was running had started again).

    .venv/bin/python bench/chaos.py [--broker sqlite|redis|rabbitmq ...] [--jobs 300]
        [--store sqlite|postgres]

The job store is SQLite unless `--store postgres` (a schema of its own in the local
PostgreSQL, dropped afterwards): the configuration `bench/side_by_side.py` measures Redis and
RabbitMQ with, where a job's start commits without waiting for the disk
(`storage.synchronous_starts`).

Restarting Redis and RabbitMQ disturbs anyone else using them (Redis restarts without
persistence: every database is emptied). tests/test_chaos.py runs the same scenario and
asserts on its figures.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

from tests.reliability import TERMINAL, Stack  # noqa: E402
from tests.support import (  # noqa: E402
    POSTGRES_URL,
    ChildProcess,
    create_postgres_schema,
    drop_postgres_schema,
    free_port,
    postgres_schema_url,
    wait_for,
)

API_BOOT = (
    "import sys, bench.chaos_probe; from skillq.cli.main import main;"
    " sys.argv = ['skillq', 'api', *sys.argv[1:]]; main()"
)
REDIS_START = [
    "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
    "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis",
    "--logfile", "/var/log/redis/ci.log",
]  # fmt: skip
JOB_SECS = 0.05
THREADS = 4


@dataclass
class Figures:
    broker: str
    store: str = "sqlite"
    accepted: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    #: Accepted jobs not terminal at the end, or completed without their side effect.
    lost: int = 0
    run_twice: int = 0
    #: Jobs run more than once although no worker running them was killed.
    run_twice_unexplained: int = 0
    #: Per SIGKILL: seconds until every job the dead worker was running had started again.
    recovery_secs: list[float] = field(default_factory=list)
    broker_restart_secs: float | None = None
    total_secs: float = 0.0


class ChaosRun:
    def __init__(self, broker: str, directory: Path, jobs: int, store: str = "sqlite") -> None:
        self.broker = broker
        self.directory = directory
        self.jobs = jobs
        self.runs_db = directory / "executions.db"
        os.environ["SKILLQ_CHAOS_RUNS"] = str(self.runs_db)
        #: The store's PostgreSQL schema (`--store postgres`), None on SQLite.
        self.schema = create_postgres_schema() if store == "postgres" else None
        extra = {}
        if self.schema is not None:
            extra["storage"] = {"backend": "postgres", "url": postgres_schema_url(self.schema)}
        self.stack = Stack.create(
            broker, directory, extra, requeue_pending_after_secs=5, max_retries=3
        )
        self.accepted: list[str] = []
        self.kills: list[tuple[float, set[int]]] = []
        self.killed_pids: set[int] = set()
        self.figures = Figures(broker, store)

    # --- processes ---

    def start_api(self) -> None:
        port = free_port()
        args = ["-c", API_BOOT, "--host", "127.0.0.1", "--port", str(port)]
        api = ChildProcess("api", args, self.stack.settings_path, self.directory)
        self.stack.api, self.stack.base_url = api, f"http://127.0.0.1:{port}"
        self.stack.client = httpx.Client(base_url=self.stack.base_url, timeout=30)

        def answers() -> bool:
            assert api.alive(), api.log()
            try:
                return self.stack.client.get("/health").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(answers, timeout=60, what="the API to answer")

    def start_worker(self) -> ChildProcess:
        args = ["-m", "dramatiq", "skillq.actors", "bench.chaos_probe", "--processes", "1"]
        args += ["--threads", str(THREADS), "--worker-shutdown-timeout", "5000"]
        worker = ChildProcess("worker", args, self.stack.settings_path, self.directory)
        wait_for(
            lambda: worker.logged("Worker process is ready") or not worker.alive(),
            timeout=60,
            what="the worker to boot",
        )
        assert worker.alive(), worker.log()
        self.stack.workers.append(worker)
        return worker

    def wait_mid_run(self, worker: ChildProcess) -> set[int]:
        """The worker's process ids, once it runs a job."""
        children = subprocess.run(
            ["pgrep", "-P", str(worker.process.pid)], capture_output=True, text=True
        ).stdout.split()
        pids = {int(pid) for pid in children}
        wait_for(lambda: self._unfinished(pids) > 0, timeout=60, what="a job running on the worker")
        return pids

    def kill_worker_mid_run(self, worker: ChildProcess) -> None:
        pids = self.wait_mid_run(worker)
        self.stack.kill_worker(worker)
        self.kills.append((time.time(), pids))
        self.killed_pids |= pids

    def restart_broker(self) -> None:
        started = time.monotonic()
        if self.broker == "redis":
            subprocess.run(["redis-cli", "shutdown", "nosave"], timeout=60, check=False)
            for folder in ("/var/lib/redis", "/var/log/redis"):
                os.makedirs(folder, exist_ok=True)
            subprocess.run(REDIS_START, timeout=60, check=True)
            wait_for(_redis_answers, timeout=60, what="Redis to answer")
        elif self.broker == "rabbitmq":
            subprocess.run(["rabbitmqctl", "stop"], timeout=120, check=False)
            subprocess.run(["rabbitmq-server", "-detached"], timeout=60, check=True)
            # await_startup fails at once while the node is still booting: ask again.
            wait_for(_rabbitmq_answers, timeout=180, what="RabbitMQ to start")
        self.figures.broker_restart_secs = round(time.monotonic() - started, 1)

    # --- jobs ---

    def submit(self, count: int) -> None:
        for _ in range(count):
            for attempt in range(50):
                try:
                    response = self.stack.client.post(
                        "/api/v1/jobs",
                        json={"type": "chaos_probe", "params": {"seconds": JOB_SECS}},
                    )
                except httpx.HTTPError:
                    response = None
                if response is not None and response.status_code == 202:
                    self.accepted.append(response.json()["id"])
                    break
                time.sleep(0.2 * (attempt + 1))

    def submit_while(self, count: int, action: Callable[[], None]) -> None:
        """Submit `count` jobs while `action` runs. A kill waits for a job running on the
        worker: after the submits, a worker faster than them (HTTP submits one at a time,
        ~20 ms each, against 4 threads of 50 ms jobs) may have run them all already, and
        the kill would wait for a running job that never comes."""
        submitting = threading.Thread(target=self.submit, args=(count,), name="chaos-submits")
        submitting.start()
        try:
            action()
        finally:
            submitting.join()

    def _executions(self) -> list[tuple[str, int, float, float | None]]:
        if not self.runs_db.exists():
            return []
        with sqlite3.connect(self.runs_db, timeout=30) as db:
            try:
                return db.execute(
                    "SELECT job_id, pid, started, finished FROM executions ORDER BY started"
                ).fetchall()
            except sqlite3.OperationalError:
                return []  # the first job is creating the table now

    def _unfinished(self, pids: set[int]) -> int:
        return sum(1 for _, pid, _, finished in self._executions() if pid in pids and not finished)

    def _states(self) -> dict[str, str]:
        if self.schema is not None:
            import psycopg2

            db = psycopg2.connect(POSTGRES_URL)
            try:
                with db.cursor() as cursor:
                    cursor.execute(f"SELECT id, state FROM {self.schema}.skillq_job")
                    return dict(cursor.fetchall())
            finally:
                db.close()
        with sqlite3.connect(self.directory / "data" / "jobs.db", timeout=30) as db:
            return dict(db.execute("SELECT id, state FROM skillq_job").fetchall())

    def _done(self) -> bool:
        states = self._states()
        return all(states.get(job_id) in TERMINAL for job_id in self.accepted)

    # --- the scenario ---

    def run(self, *, restart_broker: bool = True) -> Figures:
        try:
            self._break_and_wait(restart_broker)
            return self.analyse()
        finally:
            if self.schema is not None:
                drop_postgres_schema(self.schema)

    def _break_and_wait(self, restart_broker: bool) -> None:
        started = time.monotonic()
        third = self.jobs // 3
        try:
            self.start_api()
            worker = self.start_worker()
            self.submit_while(third, lambda: self.kill_worker_mid_run(worker))
            worker = self.start_worker()
            self.stack.stop_api()
            self.start_api()
            self.submit_while(third, lambda: self.kill_worker_mid_run(worker))
            worker = self.start_worker()
            if restart_broker and self.broker != "sqlite":
                self.wait_mid_run(worker)
                self.restart_broker()
            self.submit(self.jobs - 2 * third)
            wait_for(self._done, timeout=180, what="every job to end")
        finally:
            self.figures.total_secs = round(time.monotonic() - started, 1)
            self.stack.close()

    def analyse(self) -> Figures:
        figures, states, executions = self.figures, self._states(), self._executions()
        runs: dict[str, list[tuple[int, float, float | None]]] = {}
        for job_id, pid, begun, finished in executions:
            runs.setdefault(job_id, []).append((pid, begun, finished))
        figures.accepted = len(self.accepted)
        for job_id in self.accepted:
            state, job_runs = states.get(job_id), runs.get(job_id, [])
            figures.completed += state == "completed"
            figures.failed += state == "failed"
            figures.cancelled += state == "cancelled"
            side_effect = any(finished for _, _, finished in job_runs)
            figures.lost += state not in TERMINAL or (state == "completed" and not side_effect)
            if len(job_runs) > 1:
                figures.run_twice += 1
                # Every run but the last must have been on a worker that was killed.
                if any(pid not in self.killed_pids for pid, _, _ in job_runs[:-1]):
                    figures.run_twice_unexplained += 1
        for killed_at, pids in self.kills:
            interrupted = {
                job_id
                for job_id, job_runs in runs.items()
                for pid, begun, finished in job_runs
                if pid in pids and (finished is None or finished > killed_at)
            }
            restarts = [
                min(begun for _, begun, _ in runs[job_id] if begun > killed_at) - killed_at
                for job_id in interrupted
                if any(begun > killed_at for _, begun, _ in runs[job_id])
            ]
            if restarts:
                figures.recovery_secs.append(round(max(restarts), 1))
        return figures


def _rabbitmq_answers() -> bool:
    command = ["rabbitmqctl", "-q", "await_startup", "--timeout", "5"]
    return subprocess.run(command, capture_output=True, timeout=30, check=False).returncode == 0


def _redis_answers() -> bool:
    result = subprocess.run(["redis-cli", "ping"], capture_output=True, text=True, check=False)
    return result.stdout.strip() == "PONG"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", action="append", choices=("sqlite", "redis", "rabbitmq"))
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--no-broker-restart", action="store_true")
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    args = parser.parse_args()
    results = []
    for broker in args.broker or ["sqlite", "redis", "rabbitmq"]:
        with tempfile.TemporaryDirectory(prefix=f"skillq-chaos-{broker}-") as directory:
            run = ChaosRun(broker, Path(directory), args.jobs, args.store)
            results.append(run.run(restart_broker=not args.no_broker_restart))
        print(results[-1], flush=True)
    print()
    columns = ["broker", "store", "accepted", "completed", "lost", "run twice (unexplained)"]
    columns += ["recovery after SIGKILL, s", "broker restart, s", "run, s"]
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---:|---:|---:|---:|---|---:|---:|")
    for f in results:
        recovery = ", ".join(f"{s:g}" for s in f.recovery_secs) or "-"
        restart = "-" if f.broker_restart_secs is None else f"{f.broker_restart_secs:g}"
        print(
            f"| {f.broker} | {f.store} | {f.accepted} | {f.completed} | {f.lost} |"
            f" {f.run_twice} ({f.run_twice_unexplained}) | {recovery} | {restart} |"
            f" {f.total_secs:g} |"
        )


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    main()
