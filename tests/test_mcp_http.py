"""The MCP HTTP surface seen as raw HTTP: protocol versions, SSE or plain JSON as the client
asks, sessions (DELETE), the body limit, the `[mcp]` switches, and `--workers N` with
`[mcp] stateless = true` driven by the SDK client.
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import httpx
import pytest
from mcp_types import CLIENT_CAPABILITIES_META_KEY, PROTOCOL_VERSION_META_KEY

from tests.mcp_clients import connect
from tests.support import ChildProcess, free_port, start_api, start_worker, wait_for, write_settings

BOTH = "application/json, text/event-stream"
JSON_ONLY = "application/json"


def initialize(version: str) -> dict:
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": version,
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"},
        },
    }


def messages(response: httpx.Response) -> list[dict]:
    """The JSON-RPC messages of a response, whether it came as JSON or as SSE."""
    if response.headers["content-type"].startswith("application/json"):
        return [response.json()]
    return [
        json.loads(line[len("data: ") :])
        for line in response.text.splitlines()
        # Priming events (an id, a retry, empty data) carry no message.
        if line.startswith("data: ") and line[len("data: ") :].strip()
    ]


def modern_call(
    http: httpx.Client, name: str, arguments: dict, accept: str, **meta
) -> httpx.Response:
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {
            "name": name,
            "arguments": arguments,
            "_meta": {
                PROTOCOL_VERSION_META_KEY: "2026-07-28",
                CLIENT_CAPABILITIES_META_KEY: {},
                **meta,
            },
        },
    }
    headers = {
        "Accept": accept,
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": name,
    }
    return http.post("/mcp", json=body, headers=headers)


def _start(directory: Path, mcp: dict, server: dict | None = None, worker: bool = False):
    directory.mkdir(parents=True, exist_ok=True)
    settings_path = write_settings(
        directory,
        {"server": {"data_dir": str(directory / "data"), **(server or {})}, "mcp": mcp},
    )
    api, base_url = start_api(settings_path, directory)
    processes = [api]
    if worker:
        processes.append(start_worker(settings_path, directory))
    return base_url, processes


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("mcp-http")
    base_url, processes = _start(
        directory,
        {"inline_wait_secs": 60, "max_body_size": 8000},
        server={"max_body_size": 2000},
        worker=True,
    )
    with httpx.Client(base_url=base_url, timeout=30) as http:
        yield http
    for process in reversed(processes):
        process.stop()


@pytest.mark.parametrize("version", ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"])
def test_initialize_negotiates_every_handshake_version(server: httpx.Client, version) -> None:
    response = server.post("/mcp", json=initialize(version), headers={"Accept": BOTH})
    assert response.status_code == 200, response.text
    (answer,) = messages(response)
    assert answer["result"]["protocolVersion"] == version
    assert answer["result"]["serverInfo"]["name"] == "skillq"
    assert "tools" in answer["result"]["capabilities"]
    assert response.headers["mcp-session-id"]


def test_sse_or_plain_json_as_the_client_asks(server: httpx.Client) -> None:
    arguments = {"seconds": 0.6, "steps": 3}
    streamed = modern_call(server, "sleep", arguments, BOTH, progressToken="p1")
    plain = modern_call(server, "sleep", arguments, JSON_ONLY, progressToken="p2")
    assert streamed.headers["content-type"].startswith("text/event-stream")
    *progress, final = messages(streamed)
    assert progress and all(m["method"] == "notifications/progress" for m in progress)
    # The last notification is the completed job's 100 %, before the result.
    assert progress[-1]["params"]["progress"] == 100.0
    sent = [m["params"]["progress"] for m in progress]
    assert sent == sorted(set(sent))
    assert final["result"]["structuredContent"]["steps"] == 3
    assert plain.status_code == 200, plain.text
    assert plain.headers["content-type"].startswith("application/json")
    assert plain.json()["result"]["structuredContent"]["steps"] == 3

    # The handshake era too: a JSON-only session stays JSON-only.
    opened = server.post("/mcp", json=initialize("2025-06-18"), headers={"Accept": JSON_ONLY})
    assert opened.headers["content-type"].startswith("application/json")
    session = {
        "Accept": JSON_ONLY,
        "Mcp-Session-Id": opened.headers["mcp-session-id"],
        "MCP-Protocol-Version": "2025-06-18",
    }
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call"}
    call["params"] = {"name": "list_jobs", "arguments": {"limit": 1}}
    answered = server.post("/mcp", json=call, headers=session)
    assert answered.headers["content-type"].startswith("application/json")
    assert answered.json()["result"]["isError"] is False


def test_get_opens_the_session_stream_and_delete_ends_the_session(server: httpx.Client) -> None:
    opened = server.post("/mcp", json=initialize("2025-11-25"), headers={"Accept": BOTH})
    session = {"Mcp-Session-Id": opened.headers["mcp-session-id"]}
    with server.stream("GET", "/mcp", headers={**session, "Accept": "text/event-stream"}) as get:
        assert get.status_code == 200
        assert get.headers["content-type"].startswith("text/event-stream")
    assert server.get("/mcp", headers={"Accept": "text/event-stream"}).status_code == 400
    for accept in (BOTH, JSON_ONLY):
        opened = server.post("/mcp", json=initialize("2025-11-25"), headers={"Accept": accept})
        session = {"Accept": accept, "Mcp-Session-Id": opened.headers["mcp-session-id"]}
        assert server.delete("/mcp", headers=session).status_code == 200
        ping = {"jsonrpc": "2.0", "id": 3, "method": "ping"}
        assert server.post("/mcp", json=ping, headers=session).status_code == 404


def test_mcp_has_its_own_body_limit(server: httpx.Client) -> None:
    padding = {"padding": "x" * 4000}  # over [server] max_body_size, under [mcp] max_body_size
    within = server.post(
        "/mcp", json={**initialize("2025-11-25"), **padding}, headers={"Accept": BOTH}
    )
    assert within.status_code == 200, within.text
    over = {**initialize("2025-11-25"), "padding": "x" * 9000}
    assert server.post("/mcp", json=over, headers={"Accept": BOTH}).status_code == 413
    assert server.post("/mcp/message?session_id=" + "0" * 32, json=over).status_code == 413
    rest = server.post("/api/v1/jobs", json={"type": "sleep", "params": {}, **padding})
    assert rest.status_code == 413


def test_a_loopback_server_refuses_foreign_hosts_and_origins(server: httpx.Client) -> None:
    def post(**headers: str) -> int:
        answer = server.post(
            "/mcp", json=initialize("2025-11-25"), headers={"Accept": BOTH, **headers}
        )
        return answer.status_code

    assert post(Host="evil.example:8000") == 421
    assert post(Origin="http://evil.example") == 403
    assert post(Origin="http://localhost:5173") == 200
    assert post() == 200
    assert server.get("/mcp/sse", headers={"Host": "evil.example"}).status_code == 421


def test_mcp_switches(tmp_path: Path) -> None:
    base_url, processes = _start(tmp_path / "no-sse", {"legacy_sse": False})
    try:
        with httpx.Client(base_url=base_url, timeout=10) as http:
            assert http.get("/mcp/sse").status_code == 404
            ok = http.post("/mcp", json=initialize("2025-11-25"), headers={"Accept": BOTH})
            assert ok.status_code == 200
    finally:
        processes[0].stop()
    base_url, processes = _start(tmp_path / "named", {"allowed_hosts": ["mcp.example.com"]})
    try:
        with httpx.Client(base_url=base_url, timeout=10) as http:
            body, accept = initialize("2025-11-25"), {"Accept": BOTH}
            named = http.post("/mcp", json=body, headers={**accept, "Host": "mcp.example.com"})
            assert named.status_code == 200
            assert http.post("/mcp", json=body, headers=accept).status_code == 421
    finally:
        processes[0].stop()
    base_url, processes = _start(tmp_path / "moved", {"endpoint": "/agents/mcp"})
    try:
        with httpx.Client(base_url=base_url, timeout=10) as http:
            body, accept = initialize("2025-11-25"), {"Accept": BOTH}
            assert http.post("/agents/mcp", json=body, headers=accept).status_code == 200
            assert http.post("/mcp", json=body, headers=accept).status_code in (404, 405)
            with http.stream("GET", "/agents/mcp/sse") as stream:
                assert stream.status_code == 200
                endpoint = next(line for line in stream.iter_lines() if line.startswith("data:"))
            assert endpoint.startswith("data: /agents/mcp/message?session_id=")
    finally:
        processes[0].stop()
    base_url, processes = _start(tmp_path / "off", {"enabled": False})
    try:
        with httpx.Client(base_url=base_url, timeout=10) as http:
            refused = http.post("/mcp", json=initialize("2025-11-25"), headers={"Accept": BOTH})
            assert refused.status_code in (404, 405)
            assert http.get("/health").status_code == 200
    finally:
        processes[0].stop()


@pytest.mark.parametrize("transport", ["http", "http-2025"])
def test_several_api_processes_serve_mcp_in_stateless_mode(tmp_path: Path, transport) -> None:
    settings_path = write_settings(
        tmp_path,
        {
            "server": {"data_dir": str(tmp_path / "data")},
            "mcp": {"stateless": True, "inline_wait_secs": 60},
        },
    )
    port = free_port()
    api = ChildProcess(
        "api",
        ["-m", "skillq", "api", "--host", "127.0.0.1", "--port", str(port), "--workers", "3"],
        settings_path,
        tmp_path,
    )
    worker = start_worker(settings_path, tmp_path)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: api.log().count("Application startup complete") == 3,
            what="three API processes",
        )
        events: list[float] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            events.append(progress)

        async def main():
            # No keep-alive: each request may land on any of the processes.
            async with connect(transport, base_url=base_url, keepalive=False) as client:
                answers = [await client.call_tool("list_jobs", {"limit": 1}) for _ in range(30)]
                slept = await client.call_tool(
                    "sleep", {"seconds": 1, "steps": 4}, progress_callback=on_progress
                )
                return answers, slept

        answers, slept = anyio.run(main)
        assert not any(answer.is_error for answer in answers)
        assert not slept.is_error and slept.structured_content["steps"] == 4
        assert events and events[-1] == 100.0
    finally:
        worker.stop()
        api.stop()
