"""skillq next to raw Dramatiq, Celery and Huey on the same brokers, in one run.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/side_by_side.py            # 5,000 jobs, 3 repetitions (~25 min)
    .venv/bin/python bench/side_by_side.py --quick    # 1,000 jobs, 3 repetitions, no scale run

Needs Redis, RabbitMQ (with `rabbitmqctl` for a virtual host of its own) and PostgreSQL on
127.0.0.1. Repetition-major: each repetition runs every system once, in a shuffled order, so
load from other users of the machine spreads over all of them; the table shows the median of
the repetitions and ratios to raw Dramatiq on the same broker and to Celery. Each system's
repetition is a subprocess (`bench/side_by_side_run.py`, which lists the phases); the systems
and how they are configured alike are in `bench/peer_jobs.py`. On RabbitMQ skillq runs twice:
as shipped, its sends waiting for publisher confirms, and as `skillq-rabbitmq-unconfirmed`
(`broker.confirm_delivery = false`), as raw Dramatiq and Celery send. Celery runs three times: as
usually benchmarked, results ignored; as `celery-*-results-redis`, keeping each task's state
(STARTED, SUCCESS) in Redis, its usual result store; and as `celery-*-results-pg`, keeping it
in the same PostgreSQL as skillq's store (its database result backend), the peer whose work
is most like skillq's. Then, unless `--quick`,
`bench/store_scale.py` measures the REST API (submit/status) with 1,000,000 finished jobs in
the store against an empty one and 1,000 jobs sleeping 2 s. Prints only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]


class Systems(NamedTuple):
    """What runs on one broker; None where a system has no such variant."""

    skillq: str
    raw: str
    celery: str | None = None
    celery_redis_results: str | None = None
    celery_pg_results: str | None = None
    huey: str | None = None
    #: skillq otherwise configured: a column of its own, with no ratios.
    variant: str | None = None


BROKERS = {
    "sqlite": Systems("skillq-sqlite", "dramatiq-sqlite"),
    "redis": Systems(
        "skillq-redis", "dramatiq-redis", "celery-redis", "celery-redis-results-redis",
        "celery-redis-results-pg", "huey-redis",
    ),
    "rabbitmq": Systems(
        "skillq-rabbitmq", "dramatiq-rabbitmq", "celery-rabbitmq",
        "celery-rabbitmq-results-redis", "celery-rabbitmq-results-pg",
        variant="skillq-rabbitmq-unconfirmed",
    ),
}  # fmt: skip
#: (key, label, higher is better)
FIGURES = (
    ("enqueue_per_s", "enqueue, jobs/s", True),
    ("enqueue_p50_ms", "enqueue p50, ms", False),
    ("enqueue_p99_ms", "enqueue p99, ms", False),
    ("e2e_per_s", "e2e no-op, jobs/s", True),
    ("drain_per_s", "drain, jobs/s", True),
    ("sleep20_per_s", "20 ms jobs, jobs/s", True),
    ("idle_start_p50_ms", "idle start p50, ms", False),
    ("idle_start_p99_ms", "idle start p99, ms", False),
    ("cpu_ms_per_job", "worker CPU/job, ms", False),
    ("idle_cpu_pct", "idle worker CPU, %", False),
    ("worker_rss_mb_end", "worker RSS, MB", False),
)


def rabbitmq_vhost() -> str:
    vhost = f"skillq_bench_{os.getpid()}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, timeout=60)
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        check=True,
        timeout=60,
    )
    return vhost


def drop_rabbitmq_vhost(vhost: str) -> None:
    """Delete a virtual host `rabbitmq_vhost` made, with what is queued in it."""
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], timeout=60, check=False)


def run_one(system: str, args: argparse.Namespace, work: Path, vhost: str) -> dict | None:
    command = [
        sys.executable, str(ROOT / "bench" / "side_by_side_run.py"), system,
        "--jobs", str(args.jobs), "--idle-secs", str(args.idle_secs),
        "--latency-samples", str(args.latency_samples),
        "--work", str(work / f"{system}-{uuid.uuid4().hex[:6]}"), "--vhost", vhost,
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        print(f"  {system}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    if "store_error" in figures:
        print(f"  {system}: STORE CHECK FAILED: {figures['store_error']}", file=sys.stderr)
    return figures


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f}"


def table(results: dict[str, list[dict]], brokers: list[str]) -> None:
    med: dict[str, dict[str, float]] = {}
    for system, runs in results.items():
        med[system] = {
            key: statistics.median(run[key] for run in runs) for key, _, _ in FIGURES if runs
        }
    for broker in brokers:
        systems = BROKERS[broker]
        named = (
            systems.variant, systems.raw, systems.celery, systems.celery_redis_results,
            systems.celery_pg_results, systems.huey,
        )  # fmt: skip
        peers = [s for s in named if s and med.get(s)]
        # skillq against raw Dramatiq (always a column) and against each Celery that ran.
        against = [("skillq/raw", systems.raw)]
        celeries = (systems.celery, systems.celery_redis_results, systems.celery_pg_results)
        against += [(f"skillq/{s.replace(f'-{broker}', '', 1)}", s) for s in celeries if s in peers]
        header = f"| {broker} | skillq | " + " | ".join(peers) + " |"
        header += "".join(f" {label} |" for label, _ in against)
        print(header)
        print("|---" * (header.count("|") - 1) + "|")
        for key, label, _ in FIGURES:
            ours = med.get(systems.skillq, {}).get(key)
            cells = [fmt(ours)] + [fmt(med[s].get(key)) for s in peers]
            ratios = [ratio(ours, med.get(s, {}).get(key)) for _, s in against]
            print(f"| {label} | " + " | ".join(cells + ratios) + " |")
        print()


def fmt(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def ratio(ours: float | None, theirs: float | None) -> str:
    return "—" if not ours or not theirs else f"{ours / theirs:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 jobs; no store scale run")
    parser.add_argument("--jobs", type=int)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--broker", action="append", choices=sorted(BROKERS))
    parser.add_argument("--idle-secs", type=float)
    parser.add_argument("--latency-samples", type=int, default=40)
    args = parser.parse_args()
    args.jobs = args.jobs or (1000 if args.quick else 5000)
    args.idle_secs = args.idle_secs or (3.0 if args.quick else 5.0)
    brokers = args.broker or list(BROKERS)
    systems = [s for b in brokers for s in BROKERS[b] if s]
    vhost = rabbitmq_vhost() if "rabbitmq" in brokers else "%2F"
    results: dict[str, list[dict]] = {s: [] for s in systems}
    print(
        f"# side by side: {args.jobs} jobs, {args.repetitions} repetitions, "
        f"{os.cpu_count()} cores, python {platform.python_version()}, {platform.platform()}"
    )
    try:
        with tempfile.TemporaryDirectory(prefix="skillq-side-") as tmp:
            for rep in range(1, args.repetitions + 1):
                order = random.sample(systems, len(systems))
                for system in order:
                    print(f"  repetition {rep}: {system} ({load()})", file=sys.stderr, flush=True)
                    figures = run_one(system, args, Path(tmp), vhost)
                    if figures is not None:
                        results[system].append(figures)
    finally:
        if vhost != "%2F":
            drop_rabbitmq_vhost(vhost)
    print(f"# medians of {args.repetitions}; after the run: {load()}\n")
    table(results, brokers)
    if not args.quick:
        scale = subprocess.run([sys.executable, str(ROOT / "bench" / "store_scale.py")], cwd=ROOT)
        if scale.returncode:
            raise SystemExit(f"bench/store_scale.py failed (exit {scale.returncode})")


if __name__ == "__main__":
    main()
