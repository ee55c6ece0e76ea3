"""Where the CPU of one end-to-end job goes: the side-by-side run's e2e phase alone, with the
CPU time of every process on the path.

    .venv/bin/python bench/e2e_cpu.py SYSTEM [--jobs 3000]     (e.g. skillq-redis, celery-redis)

Builds the system as `bench/side_by_side_run.py` does (a fresh queue, and for skillq a fresh
store), starts its worker, warms it with 200 jobs, then sends `--jobs` no-op jobs from this
process while the worker runs. Prints the throughput and, per job, the CPU milliseconds of the
worker's process tree, of this process (the submitter), of the local PostgreSQL, Redis and
RabbitMQ servers, and, on Redis, the server's commands per job (`INFO commandstats`).
The side-by-side table gives one figure per system; this says which process to profile.
The servers' figures include anything else they serve meanwhile: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import psutil
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from side_by_side_run import REDIS_URL, Run, Worker, cpu_secs  # noqa: E402

#: Server processes by name prefix (RabbitMQ runs in the Erlang VM).
SERVERS = {"postgres": "postgres", "redis": "redis-server", "rabbitmq": "beam.smp"}


def servers() -> dict[str, list[psutil.Process]]:
    found: dict[str, list[psutil.Process]] = {name: [] for name in SERVERS}
    for process in psutil.process_iter(["name"]):
        for name, prefix in SERVERS.items():
            if (process.info["name"] or "").startswith(prefix):
                found[name].append(process)
    return found


def redis_calls(client: redis.Redis) -> dict[str, int]:
    return {name: stats["calls"] for name, stats in client.info("commandstats").items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system")
    parser.add_argument("--jobs", type=int, default=3000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="skillq-e2e-cpu-"))
    run = Run(args.system, work, "%2F")
    client = redis.Redis.from_url(REDIS_URL)
    me = [psutil.Process()]
    try:
        worker = Worker(run.worker_command(), run.env, work / "worker.log")
        try:
            run._throughput("warm", 200, 0)
            time.sleep(1)
            procs = {"worker": worker.processes(), "submitter": me, **servers()}
            before = {name: cpu_secs(p) for name, p in procs.items()}
            calls_before = redis_calls(client)
            rate = run._throughput("e2e", args.jobs, 0)
            after = {name: cpu_secs(p) for name, p in procs.items()}
            calls_after = redis_calls(client)
        finally:
            worker.stop()
        figures: dict[str, object] = {"system": args.system, "e2e_per_s": round(rate, 1)}
        for name in procs:
            figures[f"{name}_cpu_ms"] = round((after[name] - before[name]) * 1000 / args.jobs, 3)
        figures["redis_calls_per_job"] = {
            name.removeprefix("cmdstat_"): round((n - calls_before.get(name, 0)) / args.jobs, 2)
            for name, n in calls_after.items()
            if n - calls_before.get(name, 0) >= args.jobs / 100 and name != "cmdstat_info"
        }
        if args.system.startswith("skillq-") or run.celery_results:
            figures["store_states"] = run.store_states()
        print(json.dumps(figures))
    finally:
        run.close()


if __name__ == "__main__":
    main()
