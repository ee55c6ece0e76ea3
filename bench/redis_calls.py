"""Client CPU of one Redis call a worker makes per message, through the shared pool and
through a thread's own connection (`skillq.brokers.redis_threads`).

    .venv/bin/python bench/redis_calls.py [--calls 20000] [--rounds 3]

The call is dramatiq's dispatch script fetching from an empty list (what a consumer's fetch
and an ack cost the client, bar the reply). The two ways alternate within each round; the
medians over the rounds are printed, in µs of this process's CPU per call.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from skillq.brokers.redis_priority import PriorityRedisBroker

REDIS_URL = "redis://127.0.0.1:6379/15"


def per_call_us(call, calls: int) -> float:
    call()  # loads the script, makes the connection
    started = time.process_time()
    for _ in range(calls):
        call()
    return (time.process_time() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    broker = PriorityRedisBroker(url=REDIS_URL, namespace=f"bench-{uuid.uuid4().hex[:8]}")
    broker.declare_queue("q")
    ways = {
        "shared pool": lambda: broker.do_fetch("q", 0),
        "thread's own": lambda: broker.dispatch("fetch", "q", 0),
    }
    figures: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, call in ways.items():
            figures[name].append(per_call_us(call, args.calls))
    for name, rows in figures.items():
        print(f"{name:13} {statistics.median(rows):6.1f} µs CPU per call")
    keys = list(broker.client.scan_iter(f"{broker.namespace}:*"))
    if keys:
        broker.client.delete(*keys)


if __name__ == "__main__":
    main()
