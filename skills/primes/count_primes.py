"""primes skill: a segmented sieve that reports progress on stderr after every segment.

Progress lines follow skillq's tool protocol: `PROGRESS <fraction 0..1> <message>`.
"""

import json
import math
import sys


def small_primes(limit: int) -> list[int]:
    sieve = bytearray([1]) * (limit + 1)
    sieve[:2] = b"\x00\x00"
    for n in range(2, math.isqrt(limit) + 1):
        if sieve[n]:
            sieve[n * n :: n] = bytearray(len(sieve[n * n :: n]))
    return [n for n, is_prime in enumerate(sieve) if is_prime]


def count_primes(limit: int, segments: int) -> dict:
    base = small_primes(math.isqrt(limit) + 1)
    size = max(1, math.ceil(limit / segments))
    total = 0
    for low in range(0, limit, size):
        high = min(low + size, limit)
        segment = bytearray([1]) * (high - low)
        for p in base:
            if p * p >= high:
                break
            start = max(p * p, (low + p - 1) // p * p)
            segment[start - low :: p] = bytearray(len(segment[start - low :: p]))
        for n in range(low, min(2, high)):
            segment[n - low] = 0
        total += sum(segment)
        print(f"PROGRESS {high / limit:.4f} sieved {high} of {limit}", file=sys.stderr, flush=True)
    return {"limit": limit, "primes_below": total}


if __name__ == "__main__":
    params = json.load(sys.stdin)
    json.dump(count_primes(params["limit"], params.get("segments", 20)), sys.stdout)
