"""Submit throughput on the embedded setup, and how large the SQLite write-ahead logs grow.

Run by hand from the repository root; it prints and asserts nothing:

    .venv/bin/python bench/sqlite_wal.py                  # 2 processes x 4 threads, 20 s
    .venv/bin/python bench/sqlite_wal.py --processes 3 --seconds 60

`--processes` copies of this file (run with `--child submitter`) submit `sleep` jobs through
the jobs coordinator (a store INSERT + a broker enqueue, as the API does) from `--threads`
threads each for `--seconds`, while one more copy keeps listing jobs (readers hold
snapshots, which is what keeps a WAL from being reset). This process samples the size of
both `-wal` files every 20 ms. No worker runs: jobs stay queued.

Printed: submits per second (all processes), submit latency p50/p99, the largest WAL size
seen per file, and each WAL's size once every process has exited.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_settings(data_dir: Path) -> Path:
    path = data_dir / "settings.toml"
    path.write_text(f'[server]\ndata_dir = "{data_dir}"\n', encoding="utf-8")
    return path


def submit_for(seconds: float, threads: int, echo_bytes: int) -> list[float]:
    """Milliseconds per submit, from `threads` threads of this process."""
    from skillq import actors
    from skillq.jobs.coordinator import JobCoordinator

    coordinator = JobCoordinator(actors.broker, actors.settings)
    request = {"type": "sleep", "params": {"seconds": 0, "echo": "x" * echo_bytes}}
    samples: list[list[float]] = [[] for _ in range(threads)]
    deadline = time.monotonic() + seconds

    def run(mine: list[float]) -> None:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            coordinator.submit_job(request)
            mine.append((time.perf_counter() - started) * 1000)

    pool = [threading.Thread(target=run, args=(s,)) for s in samples]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return [ms for mine in samples for ms in mine]


def child(args: argparse.Namespace) -> None:
    if args.child == "reader":
        read_until_stdin_closes()
        return
    samples = submit_for(args.seconds, args.threads, args.echo_bytes)
    print(" ".join(f"{ms:.3f}" for ms in samples))


def read_until_stdin_closes() -> None:
    """List jobs in a loop: each listing is a read snapshot of the store."""
    from skillq import actors
    from skillq.jobs.coordinator import JobCoordinator

    coordinator = JobCoordinator(actors.broker, actors.settings)
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    while not done.is_set():
        coordinator.list_jobs(limit=20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--echo-bytes", type=int, default=200, help="size of each job's params")
    parser.add_argument("--child", choices=("submitter", "reader"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    # This process only starts the others and watches the files: it holds no connection, so
    # what is left after they exit is what a clean shutdown leaves.
    with tempfile.TemporaryDirectory(prefix="skillq-bench-wal-") as tmp:
        data_dir = Path(tmp)
        os.environ["SKILLQ_SETTINGS"] = str(write_settings(data_dir))
        from skillq.settings import load_settings

        settings = load_settings()
        subprocess.run([sys.executable, "-m", "skillq", "db", "upgrade"], cwd=ROOT, check=True)
        wals = {
            "store": Path(str(settings.storage.path) + "-wal"),
            "broker": Path(str(settings.broker.path) + "-wal"),
        }
        peak = dict.fromkeys(wals, 0)
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                for name, wal in wals.items():
                    peak[name] = max(peak[name], _size(wal))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        command = [sys.executable, __file__, *_passed(args), "--child"]
        reader = subprocess.Popen([*command, "reader"], cwd=ROOT, stdin=subprocess.PIPE)
        submitters = [
            subprocess.Popen([*command, "submitter"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
            for _ in range(args.processes)
        ]
        samples: list[float] = []
        for process in submitters:
            out, _ = process.communicate()
            samples += [float(ms) for ms in out.split()]
        reader.communicate()
        done.set()
        sampler.join()
        report(args, samples, peak)
        left = ", ".join(f"{k} {_size(v) / 2**20:.1f} MiB" for k, v in wals.items())
        print(f"  WAL after every process exited: {left}")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _passed(args: argparse.Namespace) -> list[str]:
    return [
        "--threads",
        str(args.threads),
        "--seconds",
        str(args.seconds),
        "--echo-bytes",
        str(args.echo_bytes),
    ]


def report(args: argparse.Namespace, samples: list[float], peak: dict[str, int]) -> None:
    quantiles = statistics.quantiles(samples, n=100, method="inclusive")
    print(
        f"{args.processes} processes x {args.threads} threads, {args.seconds:g} s,"
        f" params ~{args.echo_bytes} B, one reader thread"
    )
    print(
        f"  submits: {len(samples)} ({len(samples) / args.seconds:.0f}/s),"
        f" p50 {quantiles[49]:.2f} ms, p99 {quantiles[98]:.2f} ms, max {max(samples):.1f} ms"
    )
    print("  peak WAL: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in peak.items()))


if __name__ == "__main__":
    main()
