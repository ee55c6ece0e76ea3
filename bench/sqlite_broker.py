"""Throughput and idle latency: our SQLiteBroker vs plain dramatiq-sqlite 0.1.0 vs RedisBroker.

Run by hand from the repository root (needs Redis on 127.0.0.1:6379; db 15 is flushed):

    .venv/bin/python bench/sqlite_broker.py

Workers are real ``dramatiq.Worker`` subprocesses (this file with ``--worker``). Jobs append one
line per start/finish to a record file, so every broker is measured the same way. Prints only.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import dramatiq
from dramatiq.message import Message

ROOT = Path(__file__).resolve().parents[1]
QUEUE = "bench"
THREADS = 8
JOB_SECS = 0.02
REDIS_URL = "redis://127.0.0.1:6379/15"


def make_broker(kind: str, db: str) -> dramatiq.Broker:
    if kind == "ours":
        from skillq.brokers.sqlite import SQLiteBroker

        return SQLiteBroker(path=db)
    if kind == "plain":
        import dramatiq_sqlite

        return dramatiq_sqlite.SQLiteBroker(url=db)
    from dramatiq.brokers.redis import RedisBroker

    return RedisBroker(url=REDIS_URL)


def run_worker(kind: str, db: str, record: str) -> None:
    """Worker process body: record `s <start latency>` and `d <finish time>` per job."""
    broker = make_broker(kind, db)

    def note(line: str) -> None:
        fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, (line + "\n").encode())
        os.close(fd)

    def bench_job(sent_at: float, secs: float) -> None:
        note(f"s {time.time() - sent_at:.6f}")
        time.sleep(secs)
        note(f"d {time.time():.6f}")

    dramatiq.actor(bench_job, broker=broker, queue_name=QUEUE, max_retries=0)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker = dramatiq.Worker(broker, worker_threads=THREADS)
    worker.start()
    note("ready")
    stop.wait()
    worker.stop(timeout=5000)


class Run:
    """A fresh database (or Redis db) plus worker processes and their record file."""

    def __init__(self, kind: str, processes: int) -> None:
        self.kind = kind
        self.dir = Path(tempfile.mkdtemp(prefix="skillq-bench-"))
        self.db, self.record = str(self.dir / "q.db"), str(self.dir / "record.txt")
        if kind == "redis":
            import redis

            redis.Redis.from_url(REDIS_URL).flushdb()
        self.broker = make_broker(kind, self.db)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, __file__, "--worker", kind, self.db, self.record]
        self.procs = [
            subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL) for _ in range(processes)
        ]
        self._wait(lambda lines: lines.count("ready") >= processes, 30)

    def lines(self) -> list[str]:
        try:
            return Path(self.record).read_text().splitlines()
        except FileNotFoundError:
            return []

    def _wait(self, done, within: float) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if done(self.lines()):
                return True
            time.sleep(0.001)
        return False

    def send(self, secs: float) -> None:
        args = (time.time(), secs)
        self.broker.enqueue(Message(QUEUE, "bench_job", args, {}, {}))

    def throughput(self, jobs: int, within: float) -> tuple[float, int]:
        started = time.time()
        for _ in range(jobs):
            self.send(JOB_SECS)
        self._wait(lambda lines: sum(line[0] == "d" for line in lines) >= jobs, within)
        finished = [float(line[2:]) for line in self.lines() if line[0] == "d"]
        elapsed = (max(finished) if len(finished) >= jobs else time.time()) - started
        return len(finished) / elapsed, len(finished)

    def latency(self, samples: int, gap: float) -> list[float]:
        for n in range(samples):
            time.sleep(random.uniform(gap / 2, gap * 1.5))  # no phase-lock with polling
            self.send(0.0)
            self._wait(lambda lines, n=n: sum(line[0] == "s" for line in lines) > n, 5)
        return sorted(float(line[2:]) * 1000 for line in self.lines() if line[0] == "s")

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.broker.close()


def measure(kind: str, processes: int, jobs: int, within: float) -> tuple[float, int]:
    run = Run(kind, processes)
    try:
        return run.throughput(jobs, within)
    finally:
        run.stop()


def main() -> None:
    ceiling = THREADS / JOB_SECS
    print(f"(a) {JOB_SECS * 1000:.0f} ms jobs, 1 worker process x {THREADS} threads")
    print(f"    ceiling {ceiling:.0f} jobs/s")
    print(f"    {'broker':<8}{'jobs/s':>9}{'done':>12}{'of ceiling':>12}")
    rates = {}
    for kind, jobs, within in [("ours", 800, 20), ("plain", 800, 12), ("redis", 800, 20)]:
        rates[kind], done = measure(kind, 1, jobs, within)
        print(
            f"    {kind:<8}{rates[kind]:>9.0f}{f'{done}/{jobs}':>12}{rates[kind] / ceiling:>11.2f}x"
        )
    print(
        f"    ours/plain {rates['ours'] / rates['plain']:.1f}x, ours/redis "
        f"{rates['ours'] / rates['redis']:.2f}x"
    )

    two, done = measure("ours", 2, 1600, 20)
    print(
        f"(b) ours, 2 processes x {THREADS} threads: {two:.0f} jobs/s ({done}/1600 done), "
        f"{two / rates['ours']:.2f}x one process, ceiling {2 * ceiling:.0f}"
    )

    print("(c) idle enqueue-to-start latency, 40 jobs sent 50-150 ms apart, 1 process")
    print(f"    {'broker':<8}{'p50 ms':>9}{'p99 ms':>9}")
    for kind in ("ours", "plain", "redis"):
        run = Run(kind, 1)
        try:
            lat = run.latency(40, 0.1)
        finally:
            run.stop()
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        print(f"    {kind:<8}{statistics.median(lat):>9.1f}{p99:>9.1f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        run_worker(*sys.argv[2:5])
    else:
        main()
