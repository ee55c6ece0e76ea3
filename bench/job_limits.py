"""What global job-type limits cost and deliver, on a real store (SQLite in a temporary
directory, or `--postgres URL`), with in-process dramatiq workers on a StubBroker.

Run by hand from the repository root; it prints and asserts nothing:

    .venv/bin/python bench/job_limits.py [--jobs 1000] [--rounds 3]
    .venv/bin/python bench/job_limits.py --postgres postgresql://127.0.0.1/test
    .venv/bin/python bench/job_limits.py --limited-only [--rounds 3]   # part 2 alone

Printed:

1. the time per job of an unlimited type through skillq's middleware stack with and
   without `JobLimits` (variants take turns to go first), and of a type whose limit is
   never reached (`max_concurrent = 10000`: every job takes and gives back a slot);
2. the throughput of a type limited to `max_concurrent = 2` (jobs of 50 ms: the limit
   allows 40/s), beside the same jobs unlimited on a worker of exactly 2 threads (every
   job's own cost, no limiter), and of one limited to `rate = "20/second"`, beside those
   limits (with `--limited-only`, this part alone, whole-run and steady rates);
3. the CPU a worker uses while it holds 1,000 postponed jobs (one blocked job holds the
   only slot), over 5 seconds;
4. the fairness bound: how long one job of owner B, queued behind owner A's backlog of
   `--backlog` jobs of a type limited to 1 at a time (jobs of 10 ms), waits once a worker
   starts, and how many of A's jobs start before it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dramatiq
from dramatiq.brokers.stub import StubBroker

from skillq.brokers.factory import job_middleware
from skillq.brokers.job_limits import GiveBack, JobLimits, Limit, limit_from
from skillq.jobs.coordinator import JobCoordinator
from skillq.jobs.types import JobTypeOptions
from skillq.settings import Settings, WorkerSettings
from skillq.storage import JobState, bind_database, limit_usage, open_database
from skillq.storage.database import connection
from skillq.storage.migrations import upgrade
from skillq.storage.models import Job

WORKERS = WorkerSettings(max_retries=0, retry_delay_secs=0, heartbeat_secs=2)
SCHEMA = {"type": "object"}


def _broker(limits: dict[str, Limit] | None, with_limits: bool = True) -> StubBroker:
    stack = job_middleware(WORKERS, limits=limits)
    if not with_limits:
        stack = [m for m in stack if not isinstance(m, JobLimits | GiveBack)]
    return StubBroker(middleware=[*stack, JobTypeOptions()])


def _completed(ids: list[str]) -> int:
    with connection():
        return Job.select().where(Job.id.in_(ids) & (Job.state == JobState.COMPLETED)).count()


def _run(broker: StubBroker, submit: list[dict], threads: int) -> float:
    """Seconds for one worker of `threads` threads to complete every job of `submit`."""
    coordinator = JobCoordinator(broker, Settings(workers=WORKERS))
    ids = [coordinator.submit_job(body).job.id for body in submit]
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=10)
    started = time.perf_counter()
    worker.start()
    while _completed(ids) < len(ids):
        time.sleep(0.005)
    elapsed = time.perf_counter() - started
    worker.stop()
    broker.close()
    return elapsed


def per_job_ms(variant: str, jobs: int) -> float:
    limits = {"work": limit_from(max_concurrent=10_000)} if variant == "never at limit" else {}
    broker = _broker(limits, with_limits=variant != "without JobLimits")

    @dramatiq.actor(broker=broker, queue_name="default", params_schema=SCHEMA)
    def work() -> None:
        pass

    return _run(broker, [{"type": "work", "params": {}}] * jobs, threads=4) / jobs * 1000


def throughput(limit: Limit, jobs: int, seconds: float) -> float:
    return rates(limit, jobs, seconds)[0]


def rates(
    limit: Limit | None, jobs: int, seconds: float, threads: int = 8
) -> tuple[float, float, list[float]]:
    """Jobs per second over the whole run (from the worker's start to the last completion
    seen), and steady (from the first job's start to the last one's end, as the jobs record
    them): the difference is the startup's cost, apart from each handover's. `limit=None`:
    the type has no limit (the two-thread reference of `limited_only`)."""
    broker = _broker({} if limit is None else {"work": limit})
    spans: list[tuple[float, float]] = []

    @dramatiq.actor(broker=broker, queue_name="default", params_schema=SCHEMA)
    def work() -> None:
        began = time.perf_counter()
        time.sleep(seconds)
        spans.append((began, time.perf_counter()))

    whole = jobs / _run(broker, [{"type": "work", "params": {}}] * jobs, threads=threads)
    steady = jobs / (max(end for _, end in spans) - min(start for start, _ in spans))
    return whole, steady, sorted(start for start, _ in spans)


def idle_cpu(postponed: int) -> tuple[float, int]:
    """CPU % of this process over 5 s while `postponed` jobs wait for the one slot."""
    broker = _broker({"work": limit_from(max_concurrent=1)})
    gate = threading.Event()

    @dramatiq.actor(broker=broker, queue_name="default", params_schema=SCHEMA)
    def work() -> None:
        gate.wait()

    coordinator = JobCoordinator(broker, Settings(workers=WORKERS))
    ids = [
        coordinator.submit_job({"type": "work", "params": {}}).job.id for _ in range(postponed + 1)
    ]
    worker = dramatiq.Worker(broker, worker_threads=8, worker_timeout=100)
    worker.start()
    while True:
        with connection():
            waiting = limit_usage.usage().get("work", limit_usage.Usage()).postponed
        if waiting >= postponed:
            break
        time.sleep(0.1)
    cpu, wall = time.process_time(), time.perf_counter()
    time.sleep(5)
    percent = (time.process_time() - cpu) / (time.perf_counter() - wall) * 100
    gate.set()
    while _completed(ids) < len(ids):
        time.sleep(0.05)
    worker.stop()
    broker.close()
    return percent, waiting


def fairness_wait(backlog: int) -> tuple[float, int]:
    """Seconds owner B's one job waits behind A's backlog, and how many of A's started first."""
    broker = _broker({"work": limit_from(max_concurrent=1)})
    started: list[str] = []

    @dramatiq.actor(broker=broker, queue_name="default", params_schema=SCHEMA)
    def work(tag: str) -> None:
        started.append(tag)
        time.sleep(0.01)

    coordinator = JobCoordinator(broker, Settings(workers=WORKERS))
    body = {"type": "work", "params": {"tag": "a"}}
    ids = [coordinator.submit_job(body, owner="a").job.id for _ in range(backlog)]
    # B's message is queued behind all of A's: the worst case.
    single = coordinator.submit_job({"type": "work", "params": {"tag": "b"}}, owner="b").job.id
    worker = dramatiq.Worker(broker, worker_threads=8, worker_timeout=100)
    worker.start()
    begun = time.perf_counter()
    while "b" not in started:
        time.sleep(0.001)
    waited = time.perf_counter() - begun
    ahead = started.index("b")
    while _completed([*ids, single]) < backlog + 1:
        time.sleep(0.05)
    worker.stop()
    broker.close()
    return waited, ahead


@contextlib.contextmanager
def _postgres_schema(url: str | None) -> Iterator[str | None]:
    if not url:
        yield None
        return
    import psycopg2

    schema = f"bench_job_limits_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(url)
    conn.autocommit = True
    conn.cursor().execute(f"CREATE SCHEMA {schema}")
    try:
        separator = "&" if "?" in url else "?"
        yield f"{url}{separator}options=-csearch_path%3D{schema}"
    finally:
        conn.cursor().execute(f"DROP SCHEMA {schema} CASCADE")
        conn.close()


#: The reference for `max_concurrent = 2`: the same jobs on a worker of exactly two threads
#: and no limit, i.e. what two slots give with every job's own start and finish but no
#: limiter. 40/s is the bare sleep's; the gap between the reference and the limited run is
#: what the limiter costs (the handover), the rest is every job's cost, limited or not.
TWO_THREADS = "no limit, 2 threads, 80 x 50 ms"


def limited_only(rounds: int) -> None:
    """Part 2 alone, `rounds` times: a quiet machine's figure for a limited type, next to
    the two-thread reference (`TWO_THREADS`), run in turns."""
    runs = {
        "max_concurrent = 2, 80 x 50 ms": [],
        TWO_THREADS: [],
        'rate = "20/second", 60 x 0 ms': [],
    }
    after_window: list[float] = []
    for _ in range(rounds):
        for name, limit, jobs, seconds in (
            ("max_concurrent = 2, 80 x 50 ms", limit_from(max_concurrent=2), 80, 0.05),
            (TWO_THREADS, None, 80, 0.05),
            ('rate = "20/second", 60 x 0 ms', limit_from(rate="20/second"), 60, 0.0),
        ):
            whole, steady, starts = rates(limit, jobs, seconds, threads=2 if limit is None else 8)
            if limit is not None and limit.rate:
                # Past the first window (its 20 start at once), the rate itself: the 40 later
                # starts over the time since the 20th.
                after_window.append((len(starts) - 20) / (starts[-1] - starts[19]))
            runs[name].append((whole, steady))
            print(f"   {name}: whole {whole:5.1f} jobs/s, steady {steady:5.1f} jobs/s")
    for name, found in runs.items():
        whole = statistics.median(w for w, _ in found)
        steady = statistics.median(s for _, s in found)
        print(f"2. {name}: median whole {whole:5.1f}, steady {steady:5.1f} jobs/s")
    limited = statistics.median(s for _, s in runs["max_concurrent = 2, 80 x 50 ms"])
    reference = statistics.median(s for _, s in runs[TWO_THREADS])
    print(f"   steady, limited / two-thread reference: {limited / reference:.3f}")
    print(f'   rate = "20/second" after its first window: {statistics.median(after_window):.2f}/s')
    print("   (limits: 40/s for max_concurrent = 2; 20/s for the rate, whose first 20 start")
    print("   at once, so 60 take 2 s plus the last job: 30/s over the whole run)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--postponed", type=int, default=1000)
    parser.add_argument("--backlog", type=int, default=1000)
    parser.add_argument("--postgres", help="a PostgreSQL URL (default: SQLite in a temp dir)")
    parser.add_argument(
        "--limited-only",
        action="store_true",
        help="part 2 alone, --rounds times (whole-run and steady rates, and their medians)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as directory, _postgres_schema(args.postgres) as url:
        if url:
            database = open_database("postgres", url=url)
        else:
            database = open_database("sqlite", path=Path(directory) / "jobs.db")
        bind_database(database)
        upgrade()
        print(f"{'PostgreSQL' if url else 'SQLite'} store")
        if args.limited_only:
            limited_only(args.rounds)
            return

        variants = ["without JobLimits", "with JobLimits", "never at limit"]
        timings: dict[str, list[float]] = {v: [] for v in variants}
        for round_ in range(args.rounds):
            for variant in variants[round_ % 3 :] + variants[: round_ % 3]:
                timings[variant].append(per_job_ms(variant, args.jobs))
        base = statistics.median(timings[variants[0]])
        print(f"1. unlimited type, {args.jobs} jobs x {args.rounds} rounds, ms per job (median)")
        for variant in variants:
            median = statistics.median(timings[variant])
            print(f"   {variant:<20}{median:8.3f} ms  {100 * (median / base - 1):+6.1f} %")

        concurrent = throughput(limit_from(max_concurrent=2), 80, 0.05)
        reference = rates(None, 80, 0.05, threads=2)[0]
        print(f"2. max_concurrent = 2, 50 ms jobs: {concurrent:5.1f} jobs/s (limit allows 40;")
        print(f"   the same jobs unlimited on 2 threads: {reference:5.1f} jobs/s)")
        rated = throughput(limit_from(rate="20/second"), 60, 0.0)
        print(f'   rate = "20/second", 60 jobs:     {rated:5.1f} jobs/s (limit 20; the first')
        print("   20 start at once, so 60 take 2 s plus the last job)")

        percent, waiting = idle_cpu(args.postponed)
        print(f"3. worker CPU with {waiting} postponed jobs, over 5 s: {percent:.1f} % of a core")

        waited, ahead = fairness_wait(args.backlog)
        print(
            f"4. owner B's job queued after A's {args.backlog} (1 at a time, 10 ms each):"
            f" started {waited:.2f} s after the worker, after {ahead} of A's"
        )


if __name__ == "__main__":
    main()
