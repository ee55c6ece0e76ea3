"""MCP behind the same authentication as REST (`auth.mode = "jwt"` plus API keys): refused
with 401 + `WWW-Authenticate` before any MCP message is read, and each principal sees and
steers only its own jobs, over every HTTP transport.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import anyio
import httpx
import jwt
import pytest
from mcp.shared.exceptions import MCPError

from tests.mcp_clients import Rest, connect
from tests.support import ROOT, child_env, start_api, write_settings

SECRET = "mcp-test-secret-" + "x" * 32
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"},
    },
}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def token(subject: str, *roles: str, secret: str = SECRET) -> dict[str, str]:
    claims = {
        "sub": subject,
        "roles": list(roles),
        "iss": "skillq",
        "aud": "skillq-api",
        "exp": int(time.time()) + 3600,
    }
    return {"Authorization": f"Bearer {jwt.encode(claims, secret, algorithm='HS256')}"}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("mcp-auth")
    settings_path = write_settings(
        directory,
        {
            "server": {"data_dir": str(directory / "data")},
            "auth": {"mode": "jwt"},
            "auth.jwt": {"secret": SECRET},
            "mcp": {"inline_wait_secs": 60},
        },
    )
    api, base_url = start_api(settings_path, directory)
    yield base_url, settings_path
    api.stop()


async def refusal(call: Awaitable[Any]) -> Any:
    """The call's result, or the MCPError it raised."""
    try:
        return await call
    except MCPError as error:
        return error


def _api_key(settings_path: Path, name: str, role: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "skillq", "auth", "api-key", "create", name, "--role", role],
        cwd=ROOT,
        env=child_env(settings_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        token("mallory", "admin", secret="not-the-secret-" + "y" * 32),
        {"X-API-Key": "skq_unknown"},
    ],
    ids=["missing", "wrong-signature", "unknown-api-key"],
)
def test_requests_without_valid_credentials_get_401_before_mcp(secured, headers) -> None:
    base_url, _ = secured
    with httpx.Client(base_url=base_url, timeout=10, headers=headers) as http:
        answers = [
            http.post("/mcp", json=INITIALIZE, headers=ACCEPT),
            http.get("/mcp/sse"),
            http.post("/mcp/message?session_id=" + uuid.uuid4().hex, json=INITIALIZE),
        ]
    for response in answers:
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert "jsonrpc" not in response.text


@pytest.mark.parametrize("transport", ["http", "http-2025", "sse"])
def test_the_sdk_client_is_refused_without_credentials(secured, transport: str) -> None:
    base_url, _ = secured

    async def main():
        async with connect(transport, base_url=base_url) as client:
            await client.list_tools()

    # The SDK reports the 401 as a failed connection (a generic MCPError); the raw-HTTP test
    # above shows the status and challenge.
    with pytest.raises(Exception):  # noqa: B017
        anyio.run(main)


@pytest.mark.parametrize("transport", ["http", "http-2025", "sse"])
def test_each_principal_sees_and_steers_only_its_own_jobs(secured, transport: str) -> None:
    base_url, settings_path = secured
    alice = token("alice", "submitter")
    bob = {"X-API-Key": _api_key(settings_path, f"bob-{transport}", "submitter")}
    carol = token("carol", "viewer")

    async def main():
        async with connect(transport, base_url=base_url, headers=alice) as client:
            handle = await client.call_tool(
                "sleep", {"seconds": 1}, meta={"skillq/inline_wait_secs": 0}
            )
            job_id = handle.structured_content["job_id"]
            own = await client.call_tool("job_status", {"job_id": job_id})
        async with connect(transport, base_url=base_url, headers=bob) as client:
            peek = await client.call_tool("job_status", {"job_id": job_id})
            cancel = await client.call_tool("cancel_job", {"job_id": job_id})
            listed = await client.call_tool("list_jobs", {})
        async with connect(transport, base_url=base_url, headers=carol) as client:
            submit = await refusal(client.call_tool("sleep", {"seconds": 0}))
        async with connect(transport, base_url=base_url, headers=token("dave")) as client:
            roleless = await refusal(client.call_tool("list_jobs", {}))
        return job_id, own, peek, cancel, listed, submit, roleless

    job_id, own, peek, cancel, listed, submit, roleless = anyio.run(main)
    # Streamable HTTP refuses a call the roles do not allow with 403 (the SDK reports the
    # JSON-RPC error in its body); legacy SSE only acknowledges POSTs, so the tool answers.
    for refused, scope in [(roleless, "skillq:read"), (submit, "skillq:submit")]:
        if transport == "sse":
            assert refused.is_error
            assert refused.structured_content["error"]["code"] == "forbidden"
            assert refused.structured_content["error"]["details"][0]["message"] == scope
        else:
            assert isinstance(refused, MCPError) and scope in str(refused)
    assert own.structured_content["owner"] == "alice"
    for refused in (peek, cancel):
        assert refused.is_error
        assert refused.structured_content["error"]["code"] == "not_found"
    assert job_id not in {job["id"] for job in listed.structured_content["jobs"]}
    # Bob's attempts changed nothing.
    assert Rest(base_url, token("root", "admin")).job(job_id)["state"] == "pending"


def test_a_session_belongs_to_the_principal_that_opened_it(secured) -> None:
    base_url, _ = secured
    with httpx.Client(base_url=base_url, timeout=10) as http:
        opened = http.post("/mcp", json=INITIALIZE, headers={**ACCEPT, **token("alice", "admin")})
        assert opened.status_code == 200, opened.text
        session = opened.headers["mcp-session-id"]
        listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        headers = {**ACCEPT, "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-11-25"}
        borrowed = http.post("/mcp", json=listing, headers={**headers, **token("bob", "admin")})
        owned = http.post("/mcp", json=listing, headers={**headers, **token("alice", "admin")})
    assert borrowed.status_code == 404
    assert owned.status_code == 200
    *_, last = (line for line in owned.text.splitlines() if line.startswith("data: {"))
    tools = json.loads(last[len("data: ") :])["result"]["tools"]
    assert "sleep" in {tool["name"] for tool in tools}
