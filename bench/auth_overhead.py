"""What authentication adds to a request: auth `none` against JWT (HS256, RS256) and API keys.

Run by hand; it prints and asserts nothing:

    .venv/bin/python bench/auth_overhead.py [--requests 3000]

One process, one event loop, one embedded store in a temporary directory. Each app is the
real `create_app()` (every middleware, the real backend) for one auth mode, called directly
as ASGI so that network noise, which is larger than what is measured, stays out. Every row
sends `GET /api/v1/auth/whoami` (which reads nothing but the principal), interleaved round
by round so drift hits all rows alike. "added" is a row's p50/p99 minus the `none` row's.
A verified JWT is remembered until it expires, so "jwt HS256"/"jwt RS256" (one token, as a
client re-using its token sends) measure the cached path and "HS256, new"/"RS256, new" (a
different token every request) the signature check. "API key" trusts a checked key for
`auth.api_key_cache_secs` (default 5 s); "key, no cache" (`api_key_cache_secs = 0`) looks
every request's key up in the store.
Target: at most 0.2 ms added.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TARGET_MS = 0.2
WARMUP = 200
SECRET = "bench-secret-" + "s" * 32


def configure() -> None:
    """Point `actors` at a throw-away embedded store before anything imports it."""
    directory = Path(tempfile.mkdtemp(prefix="skillq-bench-auth-"))
    settings = directory / "settings.toml"
    settings.write_text(f'[server]\ndata_dir = "{directory / "data"}"\n')
    os.environ["SKILLQ_SETTINGS"] = str(settings)


def build_rows(requests: int) -> dict[str, tuple[object, list[dict[str, str]]]]:
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from skillq import actors
    from skillq.api.app import create_app
    from skillq.settings import AuthSettings, JwtSettings
    from skillq.storage import api_keys
    from skillq.storage.database import connection

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = (
        rsa_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    auth = AuthSettings(mode="jwt", jwt=JwtSettings(secret=SECRET, public_key=public_pem))
    jwt_app = create_app(dataclasses.replace(actors.settings, auth=auth))
    uncached = dataclasses.replace(auth, api_key_cache_secs=0)
    uncached_app = create_app(dataclasses.replace(actors.settings, auth=uncached))
    claims = {"sub": "bench", "roles": ["admin"], "iss": "skillq", "aud": "skillq-api"}
    claims["exp"] = int(time.time()) + 3600
    with connection():
        _, key = api_keys.create_key(f"bench-{time.time_ns()}", "admin")

    def bearers(key: object, algorithm: str, count: int) -> list[dict[str, str]]:
        tokens = (
            jwt.encode({**claims, "jti": str(i)}, key, algorithm=algorithm) for i in range(count)
        )
        return [{"authorization": f"Bearer {token}"} for token in tokens]

    fresh = requests + WARMUP
    return {
        "auth none": (create_app(), [{}]),
        "jwt HS256": (jwt_app, bearers(SECRET, "HS256", 1)),
        "jwt RS256": (jwt_app, bearers(rsa_key, "RS256", 1)),
        "HS256, new": (jwt_app, bearers(SECRET, "HS256", fresh)),
        "RS256, new": (jwt_app, bearers(rsa_key, "RS256", fresh)),
        "API key": (jwt_app, [{"x-api-key": key}]),
        "key, no cache": (uncached_app, [{"x-api-key": key}]),
    }


async def call(app, headers: dict[str, str]) -> float:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/api/v1/auth/whoami",
        "raw_path": b"/api/v1/auth/whoami",
        "root_path": "",
        "query_string": b"",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    status = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    started = time.perf_counter()
    await app(scope, receive, send)
    elapsed = time.perf_counter() - started
    assert status == [200], status  # a refused credential would measure the wrong path
    return elapsed


async def measure(rows: dict, requests: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in rows}
    for i in range(WARMUP):  # warm-up: thread pool, pooled connections
        for app, headers in rows.values():
            await call(app, headers[i % len(headers)])
    for i in range(WARMUP, WARMUP + requests):
        for name, (app, headers) in rows.items():
            times[name].append(await call(app, headers[i % len(headers)]))
    return times


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    configure()
    rows = build_rows(args.requests)
    times = asyncio.run(measure(rows, args.requests))
    print(f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs;")
    print(f"{args.requests} requests per row, in-process ASGI, GET /api/v1/auth/whoami\n")
    base50, base99 = percentile(times["auth none"], 50), percentile(times["auth none"], 99)
    print(f"{'row':<15}{'p50 ms':>9}{'p99 ms':>9}{'added p50':>11}{'added p99':>11}")
    for name, values in times.items():
        p50, p99 = percentile(values, 50), percentile(values, 99)
        print(f"{name:<15}{p50:>9.3f}{p99:>9.3f}{p50 - base50:>+11.3f}{p99 - base99:>+11.3f}")
    print(f"\ntarget: at most {TARGET_MS} ms added at p50")


if __name__ == "__main__":
    main()
