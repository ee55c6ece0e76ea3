"""Where a submit's time goes: `JobCoordinator.submit_job` timed step by step, in-process.

    .venv/bin/python bench/submit_steps.py skillq-redis --submits 2000 [--vhost V]

The store, broker and settings are those `bench/side_by_side_run.py` builds for the system
(a fresh queue, and a fresh PostgreSQL schema on Redis and RabbitMQ); no worker runs, so the
jobs only queue (on RabbitMQ, purge the `default` queue of your vhost afterwards). Each step
is timed by wrapping it: the checks of the submission, the job's columns, the store's INSERT,
the message's construction, the broker's send (with its confirm), and the pool's checkout and
return. The side-by-side run gives one number per phase; this says which step to cut, and,
being one process over a few seconds, it is less at the mercy of other load on the machine.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WARM_UP = 100


def timed(owner: Any, name: str, label: str, samples: dict[str, list[float]]) -> None:
    """Replace `owner.name` by a wrapper adding each call's milliseconds to `samples`."""
    function: Callable[..., Any] = getattr(owner, name)

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            samples.setdefault(label, []).append((time.perf_counter() - started) * 1000)

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system", choices=["skillq-sqlite", "skillq-redis", "skillq-rabbitmq"])
    parser.add_argument("--submits", type=int, default=2000)
    parser.add_argument("--vhost", default="%2F")
    parser.add_argument(
        "--pause-ms", type=float, default=0, help="sleep between submits (an idle client's)"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from bench.side_by_side_run import Run, percentile

    work = Path(tempfile.mkdtemp(prefix="submit-steps-"))
    run = Run(args.system, work, args.vhost)
    from skillq import actors
    from skillq.jobs import coordinator
    from skillq.storage.database import database_proxy

    samples: dict[str, list[float]] = {}
    timed(coordinator.JobCoordinator, "check_submission", "checks", samples)
    timed(coordinator.JobCoordinator, "job_fields", "job columns", samples)
    timed(coordinator.jobs, "insert_job", "store INSERT", samples)
    timed(coordinator.JobCoordinator, "_message", "message", samples)
    timed(type(actors.broker), "enqueue", "broker send", samples)
    timed(type(database_proxy.obj), "connect", "pool checkout", samples)
    timed(type(database_proxy.obj), "close", "pool return", samples)
    try:
        for _ in range(WARM_UP):
            run.send(time.time(), 0, "/dev/null")
        samples.clear()
        total = []
        for _ in range(args.submits):
            if args.pause_ms:
                time.sleep(args.pause_ms / 1000)
            started = time.perf_counter()
            run.send(time.time(), 0, "/dev/null")
            total.append((time.perf_counter() - started) * 1000)
    finally:
        run.close()
        shutil.rmtree(work, ignore_errors=True)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"{args.system}, {args.submits} submits, load {load}; ms per call:")
    for label, values in [("submit_job", total), *samples.items()]:
        p50, p99 = percentile(values, 50), percentile(values, 99)
        mean = statistics.mean(values)
        print(f"  {label:14s} p50 {p50:7.3f}  p99 {p99:7.3f}  mean {mean:7.3f}")


if __name__ == "__main__":
    main()
