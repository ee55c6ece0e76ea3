"""CPU per message to encode and decode a job's message: dramatiq's stdlib `JSONEncoder`
against ours (`skillq.brokers.message_encoding.MessageEncoder`, orjson).

    .venv/bin/python bench/message_encoding.py [--rounds 5]

The message is the one `JobCoordinator` sends for a `sleep` job, with the options a Redis
worker sees (job id, retries, priority, the broker's message id) and, with `--long-digits`,
a 25-digit integer among the parameters (the path that falls back to the stdlib). Best of
`--rounds` runs of 20,000 calls each, the two encoders alternating.
"""

from __future__ import annotations

import argparse
import time
import uuid

from dramatiq.encoder import Encoder, JSONEncoder

from skillq.brokers.message_encoding import MessageEncoder

CALLS = 20_000


def job_message(long_digits: bool) -> dict[str, object]:
    kwargs: dict[str, object] = {"seconds": 0}
    if long_digits:
        kwargs["id"] = 10**24 + 7
    return {
        "queue_name": "default",
        "actor_name": "sleep",
        "args": [],
        "kwargs": kwargs,
        "options": {
            "job_id": str(uuid.uuid4()),
            "max_retries": 3,
            "broker_priority": 5,
            "priority_level": 3,
            "redis_message_id": str(uuid.uuid4()),
        },
        "message_id": str(uuid.uuid4()),
        "message_timestamp": int(time.time() * 1000),
    }


def per_call_us(call: object, arg: object) -> float:
    start = time.perf_counter()
    for _ in range(CALLS):
        call(arg)  # type: ignore[operator]
    return (time.perf_counter() - start) / CALLS * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--long-digits", action="store_true")
    args = parser.parse_args()
    data = job_message(args.long_digits)
    encoders: dict[str, Encoder] = {"dramatiq": JSONEncoder(), "skillq": MessageEncoder()}
    encoded = JSONEncoder().encode(data)
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.rounds):
        for name, encoder in encoders.items():
            for step, call, arg in (
                ("encode", encoder.encode, data),
                ("decode", encoder.decode, encoded),
            ):
                figure = per_call_us(call, arg)
                best[name, step] = min(best.get((name, step), figure), figure)
    print(f"message of {len(encoded)} bytes, µs per call (best of {args.rounds} x {CALLS:,})")
    for step in ("encode", "decode"):
        ours, theirs = best["skillq", step], best["dramatiq", step]
        print(f"{step}: dramatiq {theirs:.2f}, skillq {ours:.2f}, ratio {ours / theirs:.2f}x")


if __name__ == "__main__":
    main()
