"""Per-job cost of batch submits against single submits, over HTTP and in process.

Run by hand; it prints and asserts nothing:

    .venv/bin/python bench/batch_submit.py                                 # embedded default
    .venv/bin/python bench/batch_submit.py --broker redis --store postgres
    .venv/bin/python bench/batch_submit.py --broker rabbitmq [--unconfirmed]

The API runs as `skillq api` on a free port (as in bench/http_api.py, whose helpers this
reuses) with one keep-alive httpx client; the in-process rows call the jobs coordinator of
this process on the same broker and store. No worker runs: the jobs just stay queued.
Redis uses db 15 under a namespace of its own (flushed at the end), RabbitMQ a virtual host
of its own (deleted at the end; `--unconfirmed`: `broker.confirm_delivery = false`),
PostgreSQL a schema of its own in `--postgres` (dropped at the end).

Rows, milliseconds per job (median over the calls, a batch's time divided by its size):
  - POST /api/v1/jobs, one job per request;  POST /api/v1/jobs:batch of `--batch` jobs;
  - coordinator.submit_job;  coordinator.submit_jobs of `--batch` jobs.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_api import REDIS_URL, free_port, start_api, stop_api, wait_until_healthy
from side_by_side import drop_rabbitmq_vhost
from side_by_side import rabbitmq_vhost as add_vhost

BODY = {"type": "sleep", "params": {"seconds": 0}}


def settings_text(
    data_dir: Path, port: int, args: argparse.Namespace, store_url: str | None, vhost: str
) -> str:
    lines = ["[server]", 'host = "127.0.0.1"', f"port = {port}", f'data_dir = "{data_dir}"']
    lines += ["[broker]", f'backend = "{args.broker}"']
    if args.broker == "redis":
        lines += [f'url = "{REDIS_URL}"', f'namespace = "bench-{uuid.uuid4().hex[:8]}"']
    if args.broker == "rabbitmq":
        lines += [f'url = "amqp://guest:guest@127.0.0.1:5672/{vhost}"']
        lines += [f"confirm_delivery = {str(not args.unconfirmed).lower()}"]
    if store_url is not None:
        lines += ["[storage]", 'backend = "postgres"', f'url = "{store_url}"']
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def rabbitmq_vhost(broker: str) -> Iterator[str]:
    if broker != "rabbitmq":
        yield ""
        return
    vhost = add_vhost()
    try:
        yield vhost
    finally:
        drop_rabbitmq_vhost(vhost)


@contextlib.contextmanager
def postgres_schema(url: str | None) -> Iterator[str | None]:
    if url is None:
        yield None
        return
    import psycopg2

    schema = f"skillq_bench_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{url}?options=-csearch_path%3D{schema}"
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.close()


def per_job(call: Callable[[], object], calls: int, jobs_per_call: int) -> list[float]:
    """Milliseconds per job of each call, after a few untimed calls."""
    for _ in range(3):
        call()
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000 / jobs_per_call)
    return samples


def measure(client: httpx.Client, args: argparse.Namespace) -> dict[str, list[float]]:
    from skillq import actors
    from skillq.jobs.coordinator import JobCoordinator

    batch = {"jobs": [BODY] * args.batch}
    coordinator = JobCoordinator(actors.broker, actors.settings)

    def http_single() -> None:
        client.post("/api/v1/jobs", json=BODY).raise_for_status()

    def http_batch() -> None:
        client.post("/api/v1/jobs:batch", json=batch).raise_for_status()

    def direct_single() -> None:
        coordinator.submit_job(BODY)

    def direct_batch() -> None:
        coordinator.submit_jobs(batch["jobs"])

    return {
        "http_single": per_job(http_single, args.singles, 1),
        "http_batch": per_job(http_batch, args.batches, args.batch),
        "direct_single": per_job(direct_single, args.singles, 1),
        "direct_batch": per_job(direct_batch, args.batches, args.batch),
    }


def report(r: dict[str, list[float]], args: argparse.Namespace) -> None:
    store = "postgres" if args.store == "postgres" else "sqlite"
    broker = args.broker + (" (unconfirmed)" if args.unconfirmed else "")
    print(
        f"skillq batch submit, broker={broker}, store={store}, batch={args.batch}, "
        f"python {platform.python_version()}, {os.cpu_count()} cores"
    )
    print(f"  {'what (ms per job, median)':<46} {'calls':>5} {'p50':>8} {'mean':>8}")
    for key, name, calls in [
        ("http_single", "POST /api/v1/jobs, 1 job per request", args.singles),
        ("http_batch", f"POST /api/v1/jobs:batch, {args.batch} jobs", args.batches),
        ("direct_single", "coordinator.submit_job in process", args.singles),
        ("direct_batch", f"coordinator.submit_jobs({args.batch}) in process", args.batches),
    ]:
        samples = r[key]
        print(
            f"  {name:<46} {calls:>5} {statistics.median(samples):>8.3f}"
            f" {statistics.fmean(samples):>8.3f}"
        )
    for kind in ("http", "direct"):
        ratio = statistics.median(r[f"{kind}_single"]) / statistics.median(r[f"{kind}_batch"])
        print(f"  {kind}: a batched job costs 1/{ratio:.1f} of a single submit")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", choices=("sqlite", "redis", "rabbitmq"), default="sqlite")
    parser.add_argument("--unconfirmed", action="store_true", help="RabbitMQ without confirms")
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--postgres", default="postgresql://127.0.0.1:5432/test")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--singles", type=int, default=300)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()

    postgres = args.postgres if args.store == "postgres" else None
    with (
        tempfile.TemporaryDirectory(prefix="skillq-bench-") as tmp,
        postgres_schema(postgres) as store_url,
        rabbitmq_vhost(args.broker) as vhost,
    ):
        data_dir = Path(tmp)
        port = free_port()
        path = data_dir / "settings.toml"
        path.write_text(settings_text(data_dir, port, args, store_url, vhost), encoding="utf-8")
        os.environ["SKILLQ_SETTINGS"] = str(path)
        # Configures broker and store, and creates the schema before the API starts.
        from skillq import actors

        logging.getLogger("httpx").setLevel(logging.WARNING)  # a log line per request
        log_path = data_dir / "api.log"
        server = start_api(port, log_path)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                wait_until_healthy(client, server, log_path)
                results = measure(client, args)
        finally:
            stop_api(server)
            if args.broker == "redis":
                broker = actors.broker
                keys = list(broker.client.scan_iter(f"{broker.namespace}:*"))
                if keys:
                    broker.client.delete(*keys)
        report(results, args)


if __name__ == "__main__":
    main()
