"""How throughput scales with worker processes, and what holds it back.

    .venv/bin/python bench/scale_out.py [--jobs 2000] [--processes 1,2,4] [--brokers redis,rabbitmq]

For each broker (Redis or RabbitMQ, with the job store in PostgreSQL) and each job kind
(no-op: `sleep` 0 s; 20 ms: `sleep` 0.02 s), `--jobs` jobs are submitted through the
coordinator with no worker running, then 1, 2 and 4 worker processes (`dramatiq
skillq.actors`, 8 threads each) are started side by side and, from the moment all of them
are up, timed until the store shows every job completed: the drain rate of a backlog.

Beside each rate it prints the CPU seconds per 1,000 jobs spent by the workers, PostgreSQL
and the broker's server, and how busy the machine was (1.00 = every core busy): when the
machine is near 1.00 the limit is this machine's CPU, not the store or the broker; when it
is not, the part whose CPU per job grows with the processes (or that waits on locks) is.
Runs are repetition-major (`--repeat`), the median is printed, and the scaling factor per
doubling of processes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.reliability import prepare_broker, settings_sections  # noqa: E402
from tests.support import (  # noqa: E402
    ChildProcess,
    create_postgres_schema,
    drop_postgres_schema,
    postgres_schema_url,
    wait_for,
    write_settings,
)

KINDS = {"no-op": 0.0, "20ms": 0.02}
SERVERS = {"postgres": ("postgres",), "redis": ("redis-server",), "rabbitmq": ("beam.smp",)}


TICKS = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: str) -> float:
    """utime + stime of one process, in seconds (from /proc, so no extra dependency)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def _pids() -> list[str]:
    return [entry.name for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def cpu_seconds(names: tuple[str, ...]) -> float:
    """CPU of every process whose command name is one of `names` (a server's processes)."""
    total = 0.0
    for pid in _pids():
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if name in names:
            total += _proc_cpu(pid)
    return total


def tree_cpu(roots: list[int]) -> float:
    """CPU of `roots` and their descendants (a dramatiq worker forks its processes)."""
    parents: dict[str, str] = {}
    for pid in _pids():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[pid] = stat[1]
    tree = {str(pid) for pid in roots}
    grown = True
    while grown:
        children = {pid for pid, parent in parents.items() if parent in tree} - tree
        grown = bool(children)
        tree |= children
    return sum(_proc_cpu(pid) for pid in tree)


def machine_times() -> tuple[float, float]:
    """(busy, total) jiffies of all cores, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def submit(settings_path: Path, jobs: int, seconds: float) -> None:
    """In a child process: `skillq.actors` reads its settings once, at import."""
    code = (
        "import sys\n"
        "from skillq import actors\n"
        "from skillq.jobs.coordinator import JobCoordinator\n"
        "coordinator = JobCoordinator(actors.broker, actors.settings)\n"
        f"for _ in range({jobs}):\n"
        "    coordinator.submit_job({'type': 'sleep', "
        f"'params': {{'seconds': {seconds}, 'steps': 1}}}})\n"
    )
    env = dict(os.environ, SKILLQ_SETTINGS=str(settings_path))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT)


def completed(store_url: str) -> int:
    import psycopg2

    with psycopg2.connect(store_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM skillq_job WHERE state = 'completed'")
        return cur.fetchone()[0]


def drain(broker: str, processes: int, jobs: int, seconds: float, base: Path) -> dict:
    directory = base / f"{broker}-{processes}-{uuid.uuid4().hex[:6]}"
    directory.mkdir()
    schema = create_postgres_schema()
    store_url = postgres_schema_url(schema)
    sections = settings_sections(broker, directory, requeue_pending_after_secs=600)
    sections["storage"] = {"backend": "postgres", "url": store_url, "pool_size": 12}
    settings_path = write_settings(directory, sections)
    workers = []
    try:
        submit(settings_path, jobs, seconds)
        # Side by side, as a deployment scales out: each boots while the others do.
        args = ["-m", "dramatiq", "skillq.actors", "--processes", "1", "--threads", "8"]
        workers = [
            ChildProcess(f"worker{n}", args, settings_path, directory) for n in range(processes)
        ]
        wait_for(
            lambda: all(w.logged("Worker process is ready") or not w.alive() for w in workers),
            timeout=120,
            what="the workers to boot",
        )
        if not all(w.alive() for w in workers):
            raise SystemExit("a worker died at boot:\n" + "\n".join(w.log() for w in workers))
        # Timed from the moment every worker is up: boot costs (imports, connections) are not
        # throughput; the jobs the first workers took meanwhile are left out of the count.
        started, done_before = time.perf_counter(), completed(store_url)
        machine_before = machine_times()
        worker_before = tree_cpu([w.process.pid for w in workers])
        store_cpu, broker_cpu = cpu_seconds(SERVERS["postgres"]), cpu_seconds(SERVERS[broker])
        while completed(store_url) < jobs:
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
        machine_after = machine_times()
        worker_cpu = tree_cpu([w.process.pid for w in workers]) - worker_before
        busy = (machine_after[0] - machine_before[0]) / (machine_after[1] - machine_before[1])
        counted = jobs - done_before
        if counted < jobs // 2:
            raise SystemExit(f"{done_before} of {jobs} jobs ran while workers booted: raise --jobs")
        return {
            "rate": counted / elapsed,
            "worker": worker_cpu / counted * 1000,
            "store": (cpu_seconds(SERVERS["postgres"]) - store_cpu) / counted * 1000,
            "broker": (cpu_seconds(SERVERS[broker]) - broker_cpu) / counted * 1000,
            "busy": busy,
        }
    finally:
        for worker in workers:
            worker.stop()
        drop_postgres_schema(schema)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--processes", default="1,2,4")
    parser.add_argument("--brokers", default="redis,rabbitmq")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    counts = [int(n) for n in args.processes.split(",")]
    brokers = args.brokers.split(",")
    for broker in brokers:
        prepare_broker(broker)
    results: dict[tuple[str, str, int], list[dict]] = {}
    with tempfile.TemporaryDirectory() as base:
        for _ in range(args.repeat):
            for broker in brokers:
                for kind, seconds in KINDS.items():
                    for processes in counts:
                        run = drain(broker, processes, args.jobs, seconds, Path(base))
                        results.setdefault((broker, kind, processes), []).append(run)
    print(f"{args.jobs} jobs per run, median of {args.repeat}; {os.cpu_count()} cores")
    print("CPU columns: CPU seconds per 1,000 jobs; busy: share of all cores in use")
    print(
        "broker+store      kind   procs  jobs/s  x/doubling  "
        "worker CPU  store CPU  broker CPU  busy"
    )
    for broker in brokers:
        for kind in KINDS:
            previous = None
            for processes in counts:
                runs = results[(broker, kind, processes)]
                median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
                factor = f"{median['rate'] / previous:.2f}x" if previous else "-"
                previous = median["rate"]
                print(
                    f"{broker + '+postgres':17} {kind:6} {processes:5}  {median['rate']:6.0f}  "
                    f"{factor:>10}  {median['worker']:10.2f}  {median['store']:9.2f}  "
                    f"{median['broker']:10.2f}  {median['busy']:4.2f}"
                )


if __name__ == "__main__":
    main()
