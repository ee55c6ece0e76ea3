"""Real MCP clients for the MCP tests: the SDK's client over each transport skillq serves.

http       Streamable HTTP, `mode="auto"`: the SDK probes and speaks 2026-07-28
http-2025  Streamable HTTP with the initialize handshake (a stateful session, 2025-11-25)
sse        legacy HTTP+SSE (`/mcp/sse` + `/mcp/message`), handshake era
stdio      `skillq mcp` launched as a child process, `mode="auto"`
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from tests.support import ROOT, child_env, wait_for

TRANSPORTS = ["http", "http-2025", "sse", "sse-2026", "stdio"]
PROTOCOL = {
    "http": "2026-07-28",
    "http-2025": "2025-11-25",
    "sse": "2025-11-25",
    "sse-2026": "2026-07-28",
}


def http_client(
    headers: dict[str, str] | None = None, *, keepalive: bool = True
) -> httpx2.AsyncClient:
    """`keepalive=False`: a new connection per request, so several API processes share them."""
    return httpx2.AsyncClient(
        headers=headers,
        # Generous read timeout: a tool call may wait inline, and SSE pings come every 15 s.
        timeout=httpx2.Timeout(30, read=300),
        limits=httpx2.Limits(max_keepalive_connections=None if keepalive else 0),
    )


@asynccontextmanager
async def connect(
    transport: str,
    *,
    base_url: str = "",
    settings_path: Path | None = None,
    headers: dict[str, str] | None = None,
    keepalive: bool = True,
    **options: Any,
) -> AsyncIterator[Client]:
    if transport in ("http", "http-2025"):
        client = http_client(headers, keepalive=keepalive)
        stream = streamable_http_client(f"{base_url}/mcp", http_client=client)
        mode = "auto" if transport == "http" else "legacy"
    elif transport in ("sse", "sse-2026"):
        stream = sse_client(f"{base_url}/mcp/sse", headers=headers, timeout=30)
        mode = "legacy" if transport == "sse" else "auto"
    elif transport == "stdio":
        assert settings_path is not None
        command = StdioServerParameters(
            command=sys.executable,
            args=["-m", "skillq", "mcp"],
            env=child_env(settings_path),
            cwd=ROOT,
        )
        stream, mode = command, "auto"
    else:
        raise ValueError(transport)
    async with Client(stream, mode=mode, **options) as client:
        yield client


class Rest:
    """The REST API beside the MCP endpoint: the store's view of a job."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=10, headers=headers)

    def job(self, job_id: str) -> dict:
        response = self.http.get(f"/api/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def jobs(self, **filters: Any) -> list[dict]:
        response = self.http.get("/api/v1/jobs", params={"limit": 100, **filters})
        assert response.status_code == 200, response.text
        return response.json()["jobs"]

    def unfinished_with_echo(self, marker: str) -> str | None:
        """The id of the pending or running `sleep` job whose params echo `marker` (listings
        carry no params, so each candidate is read)."""
        for listed in self.jobs(type="sleep", state="pending,running"):
            if self.job(listed["id"])["params"].get("echo") == marker:
                return listed["id"]
        return None

    def wait_state(self, job_id: str, *states: str, timeout: float = 60) -> dict:
        return wait_for(
            lambda: (job := self.job(job_id))["state"] in states and job,
            timeout=timeout,
            what=f"job {job_id} to be {' or '.join(states)}",
        )
