"""tools/call round trips over MCP Streamable HTTP, next to the same work over REST.

Run by hand; it prints and asserts nothing:

    .venv/bin/python bench/mcp_roundtrip.py [--calls 300]

One API process (`skillq api`) and one worker on the embedded SQLite broker and store, in a
temporary directory, on 127.0.0.1. Each row is timed per call with perf_counter after a
warm-up, all in this one run:

  status   a fast, immediate tool: `job_status` of a finished job   vs  GET /api/v1/jobs/{id}
  job      a whole `sleep(seconds=0)` job, submitted and awaited    vs  POST + GET until done
           (the MCP call waits inline; the REST client polls every 5 ms)

MCP is measured three ways: the SDK client speaking 2026-07-28 (one POST per call), the
SDK client in a 2025-11-25 session, and a bare httpx POST of the 2026 envelope asking for a
JSON answer (no SDK client cost) - REST uses the same bare httpx client.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.mcp_clients import connect  # noqa: E402
from tests.support import start_api, start_worker, write_settings  # noqa: E402

WARMUP = 30


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1000, p99 * 1000


async def timed(call: Callable[[], Awaitable[object]], calls: int) -> list[float]:
    for _ in range(WARMUP):
        await call()
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return samples


def modern_body(name: str, arguments: dict) -> dict:
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    params = {"name": name, "arguments": arguments, "_meta": meta}
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}


MODERN_HEADERS = {
    "Accept": "application/json",
    "MCP-Protocol-Version": "2026-07-28",
    "Mcp-Method": "tools/call",
}


async def measure(base_url: str, calls: int) -> dict[str, dict[str, list[float]]]:
    rows: dict[str, dict[str, list[float]]] = {"status": {}, "job": {}}
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        created = await http.post("/api/v1/jobs", json={"type": "sleep", "params": {"seconds": 0}})
        job_id = created.json()["id"]
        while (await http.get(f"/api/v1/jobs/{job_id}")).json()["state"] != "completed":
            await anyio.sleep(0.01)

        async def rest_status() -> None:
            assert (await http.get(f"/api/v1/jobs/{job_id}")).status_code == 200

        async def rest_job() -> None:
            body = {"type": "sleep", "params": {"seconds": 0, "steps": 1}}
            submitted = (await http.post("/api/v1/jobs", json=body)).json()
            while submitted["state"] != "completed":
                await anyio.sleep(0.005)
                submitted = (await http.get(f"/api/v1/jobs/{submitted['id']}")).json()

        def bare(name: str, arguments: dict) -> Callable[[], Awaitable[None]]:
            body = modern_body(name, arguments)
            headers = {**MODERN_HEADERS, "Mcp-Name": name}

            async def call() -> None:
                answer = (await http.post("/mcp", json=body, headers=headers)).json()
                assert answer["result"]["isError"] is False, answer

            return call

        rows["status"]["REST GET /api/v1/jobs/{id}"] = await timed(rest_status, calls)
        rows["status"]["MCP bare POST (2026, JSON)"] = await timed(
            bare("job_status", {"job_id": job_id}), calls
        )
        rows["job"]["REST POST + poll GET"] = await timed(rest_job, calls)
        rows["job"]["MCP bare POST (2026, JSON)"] = await timed(
            bare("sleep", {"seconds": 0, "steps": 1}), calls
        )

    for transport, label in (("http", "SDK client 2026-07-28"), ("http-2025", "SDK client 2025")):
        async with connect(transport, base_url=base_url) as client:

            async def status(client=client) -> None:
                assert not (await client.call_tool("job_status", {"job_id": job_id})).is_error

            async def job(client=client) -> None:
                result = await client.call_tool("sleep", {"seconds": 0, "steps": 1})
                assert not result.is_error

            rows["status"][f"MCP {label}"] = await timed(status, calls)
            rows["job"][f"MCP {label}"] = await timed(job, calls)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="skillq-bench-mcp-") as tmp:
        directory = Path(tmp)
        settings_path = write_settings(
            directory,
            {"server": {"data_dir": str(directory / "data")}, "mcp": {"inline_wait_secs": 30}},
        )
        api, base_url = start_api(settings_path, directory)
        worker = start_worker(settings_path, directory)
        try:
            rows = anyio.run(measure, base_url, args.calls)
        finally:
            worker.stop()
            api.stop()
    print(f"tools/call round trips, {args.calls} calls each after {WARMUP} warm-up (ms)")
    for group, measured in rows.items():
        base = statistics.median(next(iter(measured.values())))
        print(f"\n{group}:")
        for label, samples in measured.items():
            p50, p99 = percentiles(samples)
            ratio = statistics.median(samples) / base
            print(f"  {label:<32} p50 {p50:7.2f}   p99 {p99:7.2f}   x{ratio:4.1f} of REST p50")


if __name__ == "__main__":
    main()
