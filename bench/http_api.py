"""Latency of the REST API against raw dramatiq `send()`, on the embedded default.

Run by hand; it prints and asserts nothing:

    .venv/bin/python bench/http_api.py              # SQLite broker + SQLite store
    .venv/bin/python bench/http_api.py --broker redis

Everything lives in a temporary data directory, named by a temporary settings file that both
this process and the API subprocess read through SKILLQ_SETTINGS. The API runs as the shipped
`skillq api` command (uvicorn) on a free port of 127.0.0.1 and is measured over HTTP with one
keep-alive httpx client. No worker runs: submitted jobs just stay queued.

Rows, each timed per call with perf_counter after a warm-up:
  - POST /api/v1/jobs (a `sleep` job) and GET /api/v1/jobs/{id}, over HTTP;
  - the same two through the jobs coordinator in this process (no HTTP), to split the cost;
  - GET of an unknown path (404, no store access): the HTTP floor of client + server;
  - `actors.diagnostics.sleep.send(seconds=0)`: raw dramatiq on the same broker, the peer.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

# One INFO line per request from httpx would bury the table (skillq's logging is at INFO).
logging.getLogger("httpx").setLevel(logging.WARNING)

ROOT = Path(__file__).resolve().parents[1]
TARGETS_MS = {"submit": 3.0, "status": 1.5}
REDIS_URL = "redis://127.0.0.1:6379/15"
WARMUP = 50


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_settings(data_dir: Path, port: int, broker: str) -> Path:
    broker_lines = ['backend = "sqlite"']
    if broker == "redis":
        broker_lines = ['backend = "redis"', f'url = "{REDIS_URL}"']
    text = "\n".join(
        [
            "[server]",
            'host = "127.0.0.1"',
            f"port = {port}",
            f'data_dir = "{data_dir}"',
            "[broker]",
            *broker_lines,
        ]
    )
    path = data_dir / "settings.toml"
    path.write_text(text + "\n", encoding="utf-8")
    return path


def start_api(port: int, log_path: Path) -> subprocess.Popen:
    log = log_path.open("wb")
    command = [sys.executable, "-m", "skillq", "api", "--port", str(port)]
    return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def stop_api(server: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 10 s."""
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def wait_until_healthy(client: httpx.Client, server: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"the API exited with {server.returncode}:\n{log_path.read_text()}")
        try:
            if client.get("/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    sys.exit(f"the API did not become healthy within 30 s:\n{log_path.read_text()}")


def timed(call: Callable[[int], object], n: int) -> list[float]:
    """Milliseconds per call, after WARMUP untimed calls."""
    for i in range(WARMUP):
        call(i)
    samples = []
    for i in range(n):
        started = time.perf_counter()
        call(i)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def p(samples: list[float], percentile: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[percentile - 1]


def row(name: str, samples: list[float], target: float | None = None) -> None:
    p50, p99 = p(samples, 50), p(samples, 99)
    verdict = ""
    if target is not None:
        verdict = f"target p99 <= {target:.1f} ms: {'met' if p99 <= target else 'MISSED'}"
    print(f"  {name:<44} {len(samples):>5} {p50:>8.3f} {p99:>8.3f}  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--submits", type=int, default=500)
    parser.add_argument("--reads", type=int, default=1000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="skillq-bench-") as tmp:
        data_dir = Path(tmp)
        port = free_port()
        os.environ["SKILLQ_SETTINGS"] = str(write_settings(data_dir, port, args.broker))

        # Configures broker and store, and creates the schema before the API starts.
        from skillq import actors
        from skillq.jobs.coordinator import JobCoordinator
        from skillq.jobs.fields import job_to_dict

        log_path = data_dir / "api.log"
        server = start_api(port, log_path)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                wait_until_healthy(client, server, log_path)
                results = measure(client, actors, JobCoordinator, job_to_dict, args)
        finally:
            stop_api(server)
            if args.broker == "redis":
                # Drop our queues and this process's heartbeat entry; the API's entry
                # ages out through dramatiq's dead-worker maintenance.
                broker = actors.broker
                broker.flush_all()
                broker.client.zrem(f"{broker.namespace}:__heartbeats__", broker.broker_id)
        report(results, args)


def measure(client, actors, coordinator_class, job_to_dict, args) -> dict[str, list[float]]:
    body = {"type": "sleep", "params": {"seconds": 0}}
    job_ids: list[str] = []

    def http_submit(_: int) -> None:
        response = client.post("/api/v1/jobs", json=body)
        response.raise_for_status()
        job_ids.append(response.json()["id"])

    def http_status(i: int) -> None:
        client.get(f"/api/v1/jobs/{job_ids[i % len(job_ids)]}").raise_for_status()

    def http_floor(_: int) -> None:
        client.get("/api/v1/no-such-route")

    coordinator = coordinator_class(actors.broker, actors.settings)

    def direct_submit(_: int) -> None:
        job_to_dict(coordinator.submit_job(body, owner="local").job)

    def direct_status(i: int) -> None:
        job = coordinator.get_job(job_ids[i % len(job_ids)])
        job_to_dict(job, position_in_queue=coordinator.position_in_queue(job))

    def raw_send(_: int) -> None:
        actors.diagnostics.sleep.send(seconds=0)

    return {
        "http_submit": timed(http_submit, args.submits),
        "http_status": timed(http_status, args.reads),
        "http_floor": timed(http_floor, args.reads),
        "direct_submit": timed(direct_submit, args.submits),
        "direct_status": timed(direct_status, args.reads),
        "raw_send": timed(raw_send, args.submits),
    }


def report(r: dict[str, list[float]], args) -> None:
    print(
        f"skillq REST API latency, broker={args.broker}, store=sqlite, "
        f"python {platform.python_version()}, {os.cpu_count()} cores"
    )
    print(f"  {'what':<44} {'n':>5} {'p50 ms':>8} {'p99 ms':>8}")
    row("POST /api/v1/jobs (sleep) over HTTP", r["http_submit"], TARGETS_MS["submit"])
    row("GET /api/v1/jobs/{id} over HTTP", r["http_status"], TARGETS_MS["status"])
    row("GET unknown path (404): HTTP floor", r["http_floor"])
    row("coordinator.submit_job in process", r["direct_submit"])
    row("coordinator.get_job + position in process", r["direct_status"])
    row(f"raw dramatiq sleep.send() on {args.broker}", r["raw_send"])
    send50, send99 = p(r["raw_send"], 50), p(r["raw_send"], 99)
    sub50, sub99 = p(r["http_submit"], 50), p(r["http_submit"], 99)
    print(f"  ratio HTTP submit / raw send(): p50 {sub50 / send50:.1f}x, p99 {sub99 / send99:.1f}x")
    print(
        f"  (jobs left queued: {len(r['http_submit']) + len(r['direct_submit']) + 2 * WARMUP}; "
        f"raw sends: {len(r['raw_send']) + WARMUP})"
    )


if __name__ == "__main__":
    main()
