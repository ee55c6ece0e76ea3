"""What publisher confirms cost RabbitMQ submits from one client and from several at once.

Run by hand; it prints and asserts nothing:

    .venv/bin/python bench/concurrent_submit.py [--clients 1,8] [--submits 2400] [--rounds 3]

`broker.confirm_delivery = true` (the default) makes each send wait for RabbitMQ's confirm.
A single client pays that wait on every submit, one after another (the side-by-side run's
enqueue and e2e phases: about half the rate without confirms); clients submitting at the
same time wait side by side, each on its own channel, so the confirms cost them less. Each
row here is `--submits` jobs through `JobCoordinator.submit_job` in this process, from
`--clients` threads at once, with the store in PostgreSQL and no worker running, set up as
`bench/side_by_side_run.py` sets up `skillq-rabbitmq` and `skillq-rabbitmq-unconfirmed`
(a fresh store schema each), in a RabbitMQ virtual host of its own, deleted at the end.
Rounds alternate the two so drift hits both alike; the median rate of the rounds is printed,
with this process's CPU per submit and the ratio confirmed / unconfirmed. Each row runs in a
process of its own (skillq reads its settings once per process).

Measured with it (2026-12-02, 2 cores, RabbitMQ 3 and PostgreSQL 15 on the same machine,
median of 3): 1 client 243 / 404 submits/s (0.60), 4 clients 523 / 779 (0.67), 8 clients
637 / 882 (0.72); CPU per submit 1.56 / 1.10, 1.23 / 0.98 and 1.14 / 0.93 ms.
Tried and dropped: committing the sends of threads that send at once in one transaction, as
the store's finishes are (`storage.finish_batches`): 8 clients fell to 521 submits/s and CPU
per submit rose to 1.33 ms. Concurrent confirmed sends already overlap, each on its own
channel; one send in flight per process at a time made them wait on each other, and
the sends came too far apart (about 2 ms, behind each submit's INSERT) to form groups.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.side_by_side import drop_rabbitmq_vhost, rabbitmq_vhost  # noqa: E402
from bench.side_by_side_run import Run  # noqa: E402

SYSTEMS = ("skillq-rabbitmq", "skillq-rabbitmq-unconfirmed")
WARM_UP = 100


def submit_rate(system: str, clients: int, submits: int, vhost: str) -> tuple[float, float]:
    """Submits per second from `clients` threads, and this process's CPU ms per submit."""
    work = Path(tempfile.mkdtemp(prefix="skillq-concurrent-"))
    run = Run(system, work, vhost)
    try:
        for _ in range(WARM_UP):
            run.send(time.time(), 0, "/dev/null")
        each = submits // clients

        def client() -> None:
            for _ in range(each):
                run.send(time.time(), 0, "/dev/null")

        threads = [threading.Thread(target=client) for _ in range(clients)]
        cpu, started = time.process_time(), time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        return each * clients / elapsed, cpu * 1000 / (each * clients)
    finally:
        run.close()
        shutil.rmtree(work, ignore_errors=True)


def row(system: str, clients: int, submits: int, vhost: str) -> tuple[float, float]:
    """`submit_rate` in a new process."""
    command = [sys.executable, __file__, "--row", system, str(clients), str(submits), vhost]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    rate, cpu = json.loads(done.stdout.splitlines()[-1])
    return rate, cpu


def main() -> None:
    if sys.argv[1:2] == ["--row"]:
        system, clients, submits, vhost = sys.argv[2:6]
        print(json.dumps(submit_rate(system, int(clients), int(submits), vhost)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,8", help="comma-separated client counts")
    parser.add_argument("--submits", type=int, default=2400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    counts = [int(n) for n in args.clients.split(",")]
    rates: dict[tuple[str, int], list[tuple[float, float]]] = {}
    vhost = rabbitmq_vhost()
    try:
        for _ in range(args.rounds):
            for clients in counts:
                for system in SYSTEMS:
                    rate = row(system, clients, args.submits, vhost)
                    rates.setdefault((system, clients), []).append(rate)
    finally:
        drop_rabbitmq_vhost(vhost)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"RabbitMQ submits, {args.submits} per row, median of {args.rounds}; load {load}")
    for clients in counts:
        medians = {}
        for system in SYSTEMS:
            samples = rates[(system, clients)]
            medians[system] = statistics.median(rate for rate, _ in samples)
            cpu = statistics.median(cpu for _, cpu in samples)
            print(
                f"  {system:<28} clients {clients:>2}: {medians[system]:7.0f} submits/s,"
                f" {cpu:.3f} ms CPU per submit"
            )
        ratio = medians[SYSTEMS[0]] / medians[SYSTEMS[1]]
        print(f"  clients {clients:>2}: confirmed / unconfirmed = {ratio:.2f}")


if __name__ == "__main__":
    main()
