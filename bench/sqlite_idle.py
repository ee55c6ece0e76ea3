"""What an idle worker costs, and how fast it starts a job sent to it (any broker).

    .venv/bin/python bench/sqlite_idle.py [--system skillq-sqlite] [--reps 3] [--vhost V]

Each repetition, on a fresh data folder: starts a worker (1 process x 8 threads, the command
`bench/side_by_side_run.py` uses), lets it boot `--boot` seconds, runs one job through it
and waits 2 s more (a loaded machine can take longer to boot it), reads the CPU time of its
process tree over `--idle` seconds (psutil), then sends `--samples` jobs one at a time,
`--gap` seconds apart, each once the previous one finished, and reports send -> start
latency percentiles: from before the submit (`start_*`), and from the broker enqueue call
(`send_start_*`, the submit's store work left out). `dramatiq-sqlite` is raw Dramatiq on the
same broker, for comparison; `skillq-redis`, `skillq-rabbitmq` (give `--vhost`) and their
`dramatiq-*` peers work too.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(
    system: str, boot: float, idle: float, samples: int, gap: float, vhost: str
) -> dict[str, object]:
    sys.path.insert(0, str(ROOT))
    from bench.side_by_side_run import Run, Worker, percentile

    with tempfile.TemporaryDirectory(prefix="sqlite-idle-") as tmp:
        run = Run(system, Path(tmp), vhost)
        worker = Worker(run.worker_command(), run.env, Path(tmp) / "worker.log")
        try:
            time.sleep(boot)
            # Booted for sure (on a loaded machine 5 s may not do): one job through, then rest.
            run.send(time.time(), 0, run.record("warmup"))
            run.wait_done(run.record("warmup"), 1, timeout=120)
            time.sleep(2)
            cpu0, t0 = worker.cpu_secs(), time.monotonic()
            time.sleep(idle)
            cpu_pct = (worker.cpu_secs() - cpu0) / (time.monotonic() - t0) * 100
            rec = run.record("latency")
            enqueued = _enqueue_clock()
            offsets = []  # per job: send (before submit) -> its broker enqueue call, ms
            for i in range(samples):
                time.sleep(gap)
                sent_at = time.time()
                run.send(sent_at, 0, rec)
                offsets.append((enqueued[-1] - sent_at) * 1000)
                run.wait_done(rec, i + 1, timeout=60)
            lat = [s * 1000 for s in run.starts(rec)]
            after_send = [total - offset for total, offset in zip(lat, offsets, strict=True)]
        finally:
            worker.stop()
            run.close()
    return {
        "system": system,
        "idle_cpu_pct": round(cpu_pct, 2),
        "start_p50_ms": round(percentile(lat, 50), 2),
        "start_p90_ms": round(percentile(lat, 90), 2),
        "start_max_ms": round(max(lat), 2),
        "send_start_p50_ms": round(percentile(after_send, 50), 2),
        "send_start_p90_ms": round(percentile(after_send, 90), 2),
    }


def _enqueue_clock() -> list[float]:
    """Times (epoch) of the bench process's broker enqueue calls, for the send -> start
    part of the latency (the submit's own work, before its enqueue, left out)."""
    import dramatiq

    broker = dramatiq.get_broker()
    calls: list[float] = []
    enqueue = broker.enqueue

    def timed(message: dramatiq.Message, *, delay: int | None = None) -> dramatiq.Message:
        calls.append(time.time())
        return enqueue(message, delay=delay)

    broker.enqueue = timed  # type: ignore[method-assign]
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", default="skillq-sqlite")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--boot", type=float, default=5)
    parser.add_argument("--idle", type=float, default=20)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--gap", type=float, default=0.2)
    parser.add_argument("--vhost", default="%2F", help="RabbitMQ vhost (URL-encoded)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        figures = one(args.system, args.boot, args.idle, args.samples, args.gap, args.vhost)
        print(json.dumps(figures))
        return
    results = []
    for _ in range(args.reps):
        # One process per repetition: `Run` configures skillq through the environment.
        out = subprocess.run(
            [sys.executable, __file__, "--one", *sys.argv[1:]],
            check=True, capture_output=True, text=True, cwd=ROOT,
        )  # fmt: skip
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    for key in ("idle_cpu_pct", "start_p50_ms", "start_p90_ms", "send_start_p50_ms"):
        values = sorted(r[key] for r in results)
        print(f"{args.system} {key}: {values[0]}-{values[-1]} (median {values[len(values) // 2]})")


if __name__ == "__main__":
    main()
