"""What tracing costs on the submit path: `POST /api/v1/jobs` with tracing off against on.

Run by hand; it prints and asserts nothing:

    .venv/bin/python bench/tracing_overhead.py [--requests 2000]

One process, one embedded store and SQLite broker in a temporary directory, the real
`create_app()` called directly as ASGI (network noise is larger than what is measured).
"off" is the default (`[telemetry] exporter = "none"`: no provider, the helpers return at
once); "on" has a provider with a `BatchSpanProcessor`, as `exporter = "otlp"` sets up, whose
exporter drops the spans (the OTLP send happens on the processor's own thread, not in the
request). Rows alternate request by request, so drift hits both alike. Each request writes
the job to the store and enqueues it, the three spans (request, submit, enqueue) included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WARMUP = 200
BODY = json.dumps({"type": "sleep", "params": {"seconds": 0}}).encode()


def configure() -> None:
    """Point `actors` at a throw-away embedded store before anything imports it."""
    directory = Path(tempfile.mkdtemp(prefix="skillq-bench-tracing-"))
    settings = directory / "settings.toml"
    settings.write_text(f'[server]\ndata_dir = "{directory / "data"}"\n')
    os.environ["SKILLQ_SETTINGS"] = str(settings)


def tracing_on():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Dropping(SpanExporter):
        def export(self, spans: Sequence) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Dropping()))
    return provider


async def call(app) -> float:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/v1/jobs",
        "raw_path": b"/api/v1/jobs",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    status = []

    async def receive() -> dict:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    started = time.perf_counter()
    await app(scope, receive, send)
    elapsed = time.perf_counter() - started
    assert status == [202], status
    return elapsed


async def measure(requests: int) -> dict[str, list[float]]:
    from skillq import tracing
    from skillq.api.app import create_app

    app = create_app()
    rows = {"off": None, "on": tracing_on()}
    times: dict[str, list[float]] = {name: [] for name in rows}
    for i in range(WARMUP + requests):
        for name, provider in rows.items():
            tracing.install(provider)
            elapsed = await call(app)
            if i >= WARMUP:
                times[name].append(elapsed)
    tracing.install(None)
    return times


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    configure()
    times = asyncio.run(measure(args.requests))
    print(f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs;")
    print(f"{args.requests} requests per row, in-process ASGI, POST /api/v1/jobs (sleep)\n")
    base50, base99 = percentile(times["off"], 50), percentile(times["off"], 99)
    print(f"{'tracing':<9}{'p50 ms':>9}{'p99 ms':>9}{'added p50':>11}{'added p99':>11}")
    for name, values in times.items():
        p50, p99 = percentile(values, 50), percentile(values, 99)
        print(f"{name:<9}{p50:>9.3f}{p99:>9.3f}{p50 - base50:>+11.3f}{p99 - base99:>+11.3f}")


if __name__ == "__main__":
    main()
