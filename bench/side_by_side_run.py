"""One repetition of one system for `bench/side_by_side.py`: prints its figures as JSON.

    .venv/bin/python bench/side_by_side_run.py SYSTEM --jobs N --work DIR

Phases, in this order, on a fresh queue (and a fresh store for skillq):
  1. enqueue: N no-op jobs sent one after another with no worker running (each call timed);
  2. drain: a worker (1 process x 8 threads) starts and runs that backlog (first job end to
     last end, so the worker's boot is left out; skillq: to the last `completed_at` in the
     store);
  3. idle: the worker idles for a few seconds (CPU of its process tree, RSS);
  4. latency: jobs sent one at a time to the idle worker (send to job start);
  5. e2e: N no-op jobs sent while the worker runs (first send to last end), with the worker's
     CPU time per job over it;
  6. 20 ms: N/5 jobs of 20 ms each sent while the worker runs.
skillq's jobs count only once the store says `completed`, those of a Celery keeping results
in PostgreSQL once its result table says SUCCESS; the run checks that every job it sent ends
so in the store (none lost, none left running), and for a Celery keeping results in Redis
that each task's state there says SUCCESS.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
THREADS = 8
REDIS_URL = "redis://127.0.0.1:6379/15"
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/{vhost}"
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
#: Celery's database result backend, through SQLAlchemy, on the same server.
CELERY_RESULTS_URL = "db+postgresql+psycopg2://postgres@127.0.0.1:5432/test"


def percentile(samples: list[float], pct: int) -> float:
    if len(samples) < 2:
        return samples[0] if samples else float("nan")
    return statistics.quantiles(samples, n=100, method="inclusive")[pct - 1]


def cpu_secs(processes: list[psutil.Process]) -> float:
    """User and system CPU seconds of `processes`, those that still exist."""
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:  # gone, or not ours to read
            pass
    return total


class Worker:
    """A worker process tree, stopped the way each system expects (SIGTERM to its main)."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self._log = log.open("ab")
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.tree = psutil.Process(self.process.pid)

    def processes(self) -> list[psutil.Process]:
        try:
            return [self.tree, *self.tree.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_secs(self) -> float:
        return cpu_secs(self.processes())

    def rss_mb(self) -> float:
        return sum(p.memory_info().rss for p in self.processes()) / 2**20

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


class Run:
    def __init__(self, system: str, work: Path, vhost: str) -> None:
        self.system = system
        self.work = work
        self.queue = f"bench_{uuid.uuid4().hex[:10]}"
        self.schema: str | None = None
        self._results_connection: Any = None  # psycopg2's, kept for the polls
        self.env = dict(os.environ, BENCH_SYSTEM=system, BENCH_QUEUE=self.queue)
        self.env["PYTHONPATH"] = str(ROOT)
        self.broker = broker = system.split("-")[1]
        url = {
            "sqlite": str(work / "broker.db"),
            "redis": REDIS_URL,
            "rabbitmq": RABBITMQ_URL.format(vhost=vhost),
        }[broker]
        self.env["BENCH_URL"] = url
        if system.startswith("skillq-"):
            self.env["SKILLQ_SETTINGS"] = str(self._skillq_settings(broker, url))
        #: Where a Celery keeps its tasks' state: "pg", "redis", or "" (results ignored).
        self.celery_results = system.partition("-results-")[2]
        if self.celery_results == "pg":
            self.schema = self._postgres_schema()
            self.env["BENCH_RESULTS_URL"] = CELERY_RESULTS_URL
            self.env["BENCH_RESULTS_SCHEMA"] = self.schema
        elif self.celery_results == "redis":
            self.env["BENCH_RESULTS_URL"] = REDIS_URL  # keys prefixed with the queue's name
        os.environ.update(self.env)
        sys.path.insert(0, str(ROOT))
        from bench import peer_jobs

        self.jobs = peer_jobs
        self.send = self._sender()
        #: Jobs sent so far, all of which must end completed in the store (systems with one).
        self.expected = 0

    def _skillq_settings(self, broker: str, url: str) -> Path:
        lines = ["[server]", f'data_dir = "{self.work}"', "[broker]", f'backend = "{broker}"']
        if broker != "sqlite":
            lines.append(f'url = "{url}"')
        if broker == "redis":
            lines.append(f'namespace = "{self.queue}"')
        if self.system.endswith("-unconfirmed"):
            # Sends that do not wait for RabbitMQ's publisher confirm, as its peers here send.
            lines.append("confirm_delivery = false")
        # Warnings and errors only, as Celery runs here (-l WARNING) and Huey (-q): skillq's
        # worker otherwise writes one INFO line per finished job, which the others do not.
        lines += ["[logging]", 'level = "warning"']
        lines += ["[storage]", "pool_size = 16"]
        if broker != "sqlite":
            self.schema = self._postgres_schema()
            store_url = f"{POSTGRES_URL}?options=-csearch_path%3D{self.schema}"
            lines += ['backend = "postgres"', f'url = "{store_url}"']
        path = self.work / "settings.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _postgres_schema(self) -> str:
        """A fresh schema for this run's store, dropped by `close`."""
        import psycopg2

        schema = f"skillq_bench_{uuid.uuid4().hex[:10]}"
        with psycopg2.connect(POSTGRES_URL) as conn, conn.cursor() as cur:
            cur.execute(f"CREATE SCHEMA {schema}")
        return schema

    def _sender(self) -> Callable[[float, float, str], None]:
        probe = getattr(self.jobs, "probe", None)
        if self.system.startswith("skillq-"):
            from skillq import actors
            from skillq.jobs.coordinator import JobCoordinator

            coordinator = JobCoordinator(actors.broker, actors.settings)

            def submit(sent_at: float, secs: float, record: str) -> None:
                params = {"sent_at": sent_at, "secs": secs, "record": record}
                coordinator.submit_job({"type": "bench_probe", "params": params}, owner="local")
                self.expected += 1

            return submit
        if self.system.startswith("dramatiq-"):
            return lambda sent_at, secs, record: probe.send(sent_at, secs, record)
        if self.celery_results:

            def send_counted(sent_at: float, secs: float, record: str) -> None:
                probe.delay(sent_at, secs, record)
                self.expected += 1

            return send_counted
        if self.system.startswith("celery-"):
            return lambda sent_at, secs, record: probe.delay(sent_at, secs, record)
        return lambda sent_at, secs, record: probe(sent_at, secs, record)

    def worker_command(self) -> list[str]:
        py = sys.executable
        if self.system.startswith("skillq-"):
            return [py, "-m", "dramatiq", "skillq.actors", "bench.peer_jobs",
                    "--processes", "1", "--threads", str(THREADS)]  # fmt: skip
        if self.system.startswith("dramatiq-"):
            return [py, "-m", "dramatiq", "bench.peer_jobs",
                    "--processes", "1", "--threads", str(THREADS)]  # fmt: skip
        if self.system.startswith("celery-"):
            return [py, "-m", "celery", "-A", "bench.peer_jobs", "worker", "-P", "threads",
                    "-c", str(THREADS), "-Q", self.queue, "-l", "WARNING",
                    "--without-gossip", "--without-mingle", "--without-heartbeat"]  # fmt: skip
        return [py, "-m", "huey.bin.huey_consumer", "bench.peer_jobs.huey",
                "-w", str(THREADS), "-k", "thread", "-n", "-q"]  # fmt: skip

    # --- counting what ended -------------------------------------------------------------

    def record(self, name: str) -> str:
        return str(self.work / f"{name}.rec")

    def ends(self, record: str) -> list[float]:
        try:
            lines = Path(record).read_text().splitlines()
        except FileNotFoundError:
            return []
        return [float(line[2:]) for line in lines if line.startswith("d ")]

    def starts(self, record: str) -> list[float]:
        try:
            lines = Path(record).read_text().splitlines()
        except FileNotFoundError:
            return []
        return [float(line[2:]) for line in lines if line.startswith("s ")]

    def wait_done(self, record: str, count: int, timeout: float = 600) -> float:
        """Time (epoch) the last of `count` jobs ended: in the store for skillq and a Celery
        keeping results in PostgreSQL."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.system.startswith("skillq-") or self.celery_results == "pg":
                done, last = self._store_completed()
                if done >= self.expected:
                    return last
            else:
                ends = self.ends(record)
                if len(ends) >= count:
                    return max(ends)
            time.sleep(0.05)
        raise SystemExit(f"{self.system}: jobs did not finish within {timeout} s")

    def _store_completed(self) -> tuple[int, float]:
        if self.celery_results == "pg":
            rows = self._celery_results(
                "SELECT count(*), max(date_done) FROM {} WHERE status = 'SUCCESS'"
            )
            count, last = rows[0] if rows else (0, None)
            return count, last.replace(tzinfo=UTC).timestamp() if last is not None else 0.0
        import peewee

        from skillq.storage.database import connection
        from skillq.storage.models import Job

        with connection():
            count, last = (
                Job.select(peewee.fn.COUNT(Job.id), peewee.fn.MAX(Job.completed_at))
                .where(Job.state == "completed")
                .tuples()
                .get()
            )
        if isinstance(last, str):  # SQLite hands back text for an aggregate
            from datetime import datetime

            last = datetime.fromisoformat(last)
        stamp = last.replace(tzinfo=UTC).timestamp() if last is not None else 0.0
        return count, stamp

    def _celery_results(self, sql: str) -> list[tuple]:
        """Rows of `sql` on the Celery result backend's task table (`{}` in it); none before the
        worker has made the table. One connection for all the polls, as skillq's pooled one."""
        import psycopg2

        if self._results_connection is None:
            self._results_connection = psycopg2.connect(POSTGRES_URL)
            self._results_connection.autocommit = True
        with self._results_connection.cursor() as cur:
            cur.execute("SELECT to_regclass(%s)", (f"{self.schema}.celery_taskmeta",))
            if cur.fetchone()[0] is None:
                return []
            cur.execute(sql.format(f"{self.schema}.celery_taskmeta"))
            return cur.fetchall()

    def store_states(self) -> dict[str, int]:
        if self.celery_results == "pg":
            rows = self._celery_results("SELECT status, count(*) FROM {} GROUP BY status")
            return {status.lower().replace("success", "completed"): n for status, n in rows}
        if self.celery_results == "redis":
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            states: dict[str, int] = {}
            for key in client.scan_iter(f"{self.queue}:celery-task-meta-*", count=1000):
                status = json.loads(client.get(key) or "{}").get("status", "MISSING")
                state = status.lower().replace("success", "completed")
                states[state] = states.get(state, 0) + 1
            return states
        import peewee

        from skillq.storage.database import connection
        from skillq.storage.models import Job

        with connection():
            rows = Job.select(Job.state, peewee.fn.COUNT(Job.id)).group_by(Job.state).tuples()
            return {state: count for state, count in rows}

    # --- phases --------------------------------------------------------------------------

    def run(self, jobs: int, idle_secs: float, latency_samples: int) -> dict[str, object]:
        out: dict[str, object] = {"system": self.system}
        rec = self.record("drain")
        samples = []
        for _ in range(jobs):
            started = time.perf_counter()
            self.send(time.time(), 0, rec)
            samples.append((time.perf_counter() - started) * 1000)
        out["enqueue_per_s"] = jobs / (sum(samples) / 1000)
        out["enqueue_p50_ms"] = percentile(samples, 50)
        out["enqueue_p99_ms"] = percentile(samples, 99)

        worker = Worker(self.worker_command(), self.env, self.work / "worker.log")
        try:
            last = self.wait_done(rec, jobs)
            out["drain_per_s"] = jobs / (last - min(self.ends(rec)))

            time.sleep(1.0)
            cpu0, t0 = worker.cpu_secs(), time.monotonic()
            time.sleep(idle_secs)
            out["idle_cpu_pct"] = (worker.cpu_secs() - cpu0) / (time.monotonic() - t0) * 100
            out["worker_rss_mb"] = worker.rss_mb()

            rec = self.record("latency")
            for i in range(latency_samples):
                time.sleep(0.15 + random.random() * 0.1)
                self.send(time.time(), 0, rec)
                self.wait_done(rec, i + 1, timeout=60)
            lat = [s * 1000 for s in self.starts(rec)]
            out["idle_start_p50_ms"] = percentile(lat, 50)
            out["idle_start_p99_ms"] = percentile(lat, 99)

            # Worker CPU per job over the e2e phase (the worker is booted and warm by then).
            cpu0 = worker.cpu_secs()
            out["e2e_per_s"] = self._throughput("e2e", jobs, 0)
            out["cpu_ms_per_job"] = (worker.cpu_secs() - cpu0) * 1000 / jobs
            out["sleep20_per_s"] = self._throughput("sleep20", max(jobs // 5, 50), 0.02)
            out["worker_rss_mb_end"] = worker.rss_mb()
        finally:
            worker.stop()
        if self.system.startswith("skillq-") or self.celery_results:
            states = self.store_states()
            out["store_states"] = states
            if states.get("completed", 0) != self.expected or len(states) != 1:
                out["store_error"] = f"expected {self.expected} completed, found {states}"
        return out

    def _throughput(self, name: str, count: int, secs: float) -> float:
        rec = self.record(name)
        started = time.time()
        for _ in range(count):
            self.send(time.time(), secs, rec)
        last = self.wait_done(rec, count)
        return count / (last - started)

    def close(self) -> None:
        if self._results_connection is not None:
            self._results_connection.close()
        if self.broker == "redis" or self.celery_results == "redis":
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            for pattern in (f"{self.queue}*", f"*{self.queue}*"):
                for key in client.scan_iter(pattern):
                    client.delete(key)
            if self.broker == "redis" and self.system.startswith("celery-"):
                # kombu's Redis transport notes when the worker's remote-control binding
                # (`celery.pidbox`) expires in a key of its own, outside the run's names.
                client.zrem("_kombu.binding_deadlines", "celery.pidbox")
        if self.broker == "rabbitmq" and not self.system.startswith("skillq-"):
            import pika

            params = pika.URLParameters(self.env["BENCH_URL"])
            with pika.BlockingConnection(params) as conn:
                channel = conn.channel()
                for queue in (self.queue, f"{self.queue}.DQ", f"{self.queue}.XQ"):
                    channel.queue_delete(queue)
        if self.schema is not None:
            if self.system.startswith("skillq-"):
                from skillq.storage.database import database_proxy

                database_proxy.close_all()
            import psycopg2

            conn = psycopg2.connect(POSTGRES_URL)
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
            conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system")
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--idle-secs", type=float, default=5)
    parser.add_argument("--latency-samples", type=int, default=40)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--vhost", default="%2F")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    run = Run(args.system, args.work, args.vhost)
    try:
        figures = run.run(args.jobs, args.idle_secs, args.latency_samples)
    finally:
        run.close()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
