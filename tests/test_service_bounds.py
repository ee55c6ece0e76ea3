"""One client cannot take the service down for everyone: each attack of issue 11's finding 8,
run bounded against a real `skillq api` process on 127.0.0.1 whose limits are set small, and
each time a control request from someone else is still answered.

The deadlines below bound the test (a refused or hung control request fails it); they assert
nothing about speed.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import jwt
import pytest

from tests.support import api_with_worker, start_api, wait_for, write_settings

LIMIT_CONCURRENCY = 30
HEAD_TIMEOUT_SECS = 2
MAX_STREAMS = 4
MAX_SESSIONS = 3
MAX_SSE = 2
MAX_PARAMS_BYTES = 4096
MAX_OFFSET = 50
MAX_NODES = 2000
#: How long a control request may take while an attack runs: generous on a busy machine,
#: far below "never" (what the unbounded server gave).
CONTROL_TIMEOUT_SECS = 30
MCP_JSON = {"Accept": "application/json", "Content-Type": "application/json"}


def bounded_sections(directory: Path) -> dict[str, dict[str, object]]:
    return {
        "server": {
            "data_dir": str(directory / "data"),
            "limit_concurrency": LIMIT_CONCURRENCY,
            "timeout_keep_alive_secs": HEAD_TIMEOUT_SECS,
            "max_streams_per_principal": MAX_STREAMS,
            "max_json_nodes": MAX_NODES,
            "stream_poll_secs": 0.2,
        },
        "storage": {"pool_size": 4},
        "mcp": {
            "max_sessions_per_principal": MAX_SESSIONS,
            "session_idle_secs": 2,
            "max_sse_per_principal": MAX_SSE,
        },
        "jobs": {"max_params_bytes": MAX_PARAMS_BYTES, "max_list_offset": MAX_OFFSET},
    }


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("bounded")
    process, base_url = start_api(write_settings(directory, bounded_sections(directory)), directory)
    try:
        yield base_url
    finally:
        process.stop()


def address(base_url: str) -> tuple[str, int]:
    host, port = base_url.removeprefix("http://").split(":")
    return host, int(port)


def control(base_url: str, path: str = "/api/v1/jobs?limit=1") -> httpx.Response:
    """Someone else's request, on a fresh connection, that must get its answer."""
    with httpx.Client(base_url=base_url, timeout=CONTROL_TIMEOUT_SECS) as client:
        return client.get(path)


def eventually_answered(base_url: str, path: str = "/health") -> int:
    """Retries a control request (a refused connection is retried) until it is answered."""

    def attempt() -> int | None:
        try:
            return control(base_url, path).status_code
        except httpx.TransportError:
            return None

    return wait_for(attempt, timeout=CONTROL_TIMEOUT_SECS, what=f"an answer to {path}")


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """True once the server closes `sock` (EOF or reset) within `within` seconds. Bytes
    still on their way (the rest of an earlier response, which may come in more than one
    segment) are read past: only the close counts."""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if sock.recv(65536) == b"":
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
    return False


def opens(client: httpx.Client, path: str) -> bool:
    with client.stream("GET", path) as response:
        return response.status_code == 200


def submit(base_url: str, params: dict) -> httpx.Response:
    body = {"type": "sleep", "params": params}
    return httpx.post(f"{base_url}/api/v1/jobs", json=body, timeout=CONTROL_TIMEOUT_SECS)


def test_idle_connections_past_the_cap_are_closed_and_idle_ones_expire(api: str) -> None:
    idle = [socket.create_connection(address(api)) for _ in range(LIMIT_CONCURRENCY)]
    try:
        time.sleep(0.3)  # let the server accept them all
        extra = socket.create_connection(address(api))
        with extra:
            # Closed on arrival: its request gets no answer at all (not even a 503).
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                extra.sendall(b"GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert closed_by_server(extra, within=CONTROL_TIMEOUT_SECS)
        # None of them ever sends a request: each is closed once its head deadline passes.
        assert all(closed_by_server(sock, within=CONTROL_TIMEOUT_SECS) for sock in idle)
        assert eventually_answered(api) == 200
        assert control(api).status_code == 200
    finally:
        for sock in idle:
            sock.close()


def test_a_slowloris_connection_is_closed(api: str) -> None:
    with socket.create_connection(address(api)) as sock:
        sock.sendall(b"GET /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        closed = False
        deadline = time.monotonic() + CONTROL_TIMEOUT_SECS
        while time.monotonic() < deadline and not closed:
            try:
                sock.sendall(b"X-Trickle: 1\r\n")  # a header line now and then, never the end
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            closed = closed_by_server(sock, within=HEAD_TIMEOUT_SECS / 2)
        assert closed
    # A kept-alive connection that starts its next request and never finishes it, likewise.
    with socket.create_connection(address(api)) as sock:
        sock.sendall(b"GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        sock.settimeout(CONTROL_TIMEOUT_SECS)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /live HTTP/1.1\r\n")
        assert closed_by_server(sock, within=CONTROL_TIMEOUT_SECS)
    assert control(api).status_code == 200


def mcp_initialize(
    base_url: str, accept: str = "application/json", headers: dict[str, str] | None = None
) -> httpx.Response:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "flood", "version": "0"},
        },
    }
    headers = {**MCP_JSON, "Accept": accept, **(headers or {})}
    return httpx.post(f"{base_url}/mcp", json=body, headers=headers, timeout=CONTROL_TIMEOUT_SECS)


def test_mcp_sessions_are_capped_per_principal_and_expire_when_idle(api: str) -> None:
    def initialize(accept: str = "application/json") -> httpx.Response:
        return mcp_initialize(api, accept)

    opened = [initialize("application/json, text/event-stream")]
    opened += [initialize() for _ in range(MAX_SESSIONS - 1)]
    assert [answer.status_code for answer in opened] == [200] * MAX_SESSIONS
    # Both answer modes count against the same cap.
    assert initialize().status_code == 503
    assert initialize("application/json, text/event-stream").status_code == 503
    assert control(api).status_code == 200
    # Ending a session frees its place at once ...
    ended = opened[-1].headers["mcp-session-id"]
    gone = httpx.delete(f"{api}/mcp", headers={**MCP_JSON, "mcp-session-id": ended})
    assert gone.status_code == 200
    assert initialize().status_code == 200
    # ... and idle sessions expire after [mcp] session_idle_secs.
    wait_for(lambda: initialize().status_code == 200, timeout=15, what="idle sessions to expire")


def test_legacy_sse_connections_are_capped_per_principal(api: str) -> None:
    with httpx.Client(base_url=api, timeout=CONTROL_TIMEOUT_SECS) as client:
        with client.stream("GET", "/mcp/sse") as first, client.stream("GET", "/mcp/sse") as second:
            assert (first.status_code, second.status_code) == (200, 200)
            refused = client.get("/mcp/sse")
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "too_many_requests"
            assert control(api).status_code == 200
        wait_for(lambda: opens(client, "/mcp/sse"), what="a free SSE slot")


def test_event_streams_are_capped_per_principal(api: str) -> None:
    job = submit(api, {"seconds": 0}).json()  # no worker: it stays pending, streams stay open
    url = f"/api/v1/jobs/{job['id']}/stream"
    with httpx.Client(base_url=api, timeout=CONTROL_TIMEOUT_SECS) as client:
        streams = [client.stream("GET", url) for _ in range(MAX_STREAMS)]
        opened = [stream.__enter__() for stream in streams]
        try:
            assert [response.status_code for response in opened] == [200] * MAX_STREAMS
            refused = client.get(url)
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "too_many_requests"
            assert control(api).status_code == 200
        finally:
            for stream in streams:
                stream.__exit__(None, None, None)
        wait_for(lambda: opens(client, url), what="a free stream slot")


def test_listings_carry_no_documents_and_deep_offsets_are_refused(api: str) -> None:
    big = {"seconds": 0, "echo": "x" * (MAX_PARAMS_BYTES - 200)}
    job = submit(api, big).json()
    listed = httpx.get(f"{api}/api/v1/jobs", params={"limit": 100}).json()
    assert listed["jobs"] and all("params" not in j and "result" not in j for j in listed["jobs"])
    assert {"id", "state", "type", "progress"} <= set(listed["jobs"][0])
    shown = httpx.get(f"{api}/api/v1/jobs/{job['id']}").json()
    assert shown["params"] == big
    deep = httpx.get(f"{api}/api/v1/jobs", params={"offset": MAX_OFFSET + 1})
    assert deep.status_code == 422
    assert deep.json()["error"]["details"][0]["path"] == "offset"
    assert httpx.get(f"{api}/api/v1/jobs", params={"offset": MAX_OFFSET}).status_code == 200


def test_params_past_the_size_cap_are_refused_before_anything_is_written(api: str) -> None:
    before = httpx.get(f"{api}/api/v1/jobs").json()["total"]
    refused = submit(api, {"seconds": 0, "echo": "x" * MAX_PARAMS_BYTES})
    assert refused.status_code == 422
    assert refused.json()["error"]["details"][0]["path"] == "params"
    assert httpx.get(f"{api}/api/v1/jobs").json()["total"] == before


def test_large_bodies_are_refused_by_value_count_while_probes_answer(api: str) -> None:
    # ~1 MB each, nested deep and wide: far more values than [server] max_json_nodes.
    inner = [[[0] * 8] * 8] * 5000
    nested: object = inner
    for _ in range(40):
        nested = [nested]
    body = json.dumps({"type": "sleep", "params": {"echo": nested}}, separators=(",", ":"))
    body = body.encode()
    assert 500_000 < len(body) < 1_048_576
    stop = threading.Event()

    def attack() -> list[int]:
        statuses = []
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                response = client.post(
                    f"{api}/api/v1/jobs", content=body, headers={"Content-Type": "application/json"}
                )
                statuses.append(response.status_code)
        return statuses

    with ThreadPoolExecutor(8) as pool:
        attackers = [pool.submit(attack) for _ in range(8)]
        try:
            time.sleep(0.5)
            probes = [control(api, "/health").status_code for _ in range(5)]
        finally:
            stop.set()
        statuses = [status for attacker in attackers for status in attacker.result()]
    assert probes == [200] * 5
    assert statuses and set(statuses) == {400}
    answer = httpx.post(
        f"{api}/api/v1/jobs", content=body, headers={"Content-Type": "application/json"}
    )
    assert "too many values" in answer.json()["error"]["message"]


def test_the_documented_rebinding_request_is_refused(api: str) -> None:
    # issue 11, finding 4, against the real server.
    refused = httpx.post(
        f"{api}/api/v1/jobs",
        json={"type": "sleep", "params": {"seconds": 0}},
        headers={"Host": "evil.com", "Origin": "http://evil.com"},
    )
    assert refused.status_code == 400
    assert httpx.get(f"{api}/health", headers={"Host": "evil.com"}).status_code == 200


def test_a_result_past_the_size_cap_fails_the_job(tmp_path: Path) -> None:
    sections = bounded_sections(tmp_path)
    sections["jobs"]["max_result_bytes"] = 2048
    with api_with_worker(tmp_path, sections) as api:
        job = submit(api, {"seconds": 0, "steps": 1, "echo": "x" * 3000}).json()

        def finished() -> dict | None:
            shown = httpx.get(f"{api}/api/v1/jobs/{job['id']}").json()
            return shown if shown["state"] in ("completed", "failed") else None

        shown = wait_for(finished, what="the job to end")
        assert shown["state"] == "failed"
        assert shown["error"]["type"] == "ResultTooLarge"
        assert shown["result"] is None
        small = submit(api, {"seconds": 0, "steps": 1, "echo": "fits"}).json()
        wait_for(
            lambda: httpx.get(f"{api}/api/v1/jobs/{small['id']}").json()["state"] == "completed",
            what="a small result to be kept",
        )


def test_a_worker_with_more_threads_than_the_pool_fits_is_warned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from skillq.cli import main

    # `--settings` exports SKILLQ_SETTINGS; monkeypatch puts the session's back afterwards.
    monkeypatch.setenv("SKILLQ_SETTINGS", os.environ["SKILLQ_SETTINGS"])
    settings = write_settings(tmp_path, {"storage": {"pool_size": 5}})
    launched: list[list[str]] = []
    monkeypatch.setattr(main.os, "execv", lambda path, argv: launched.append(argv))
    runner = CliRunner()
    crowded = runner.invoke(
        main.app, ["--settings", str(settings), "worker", "--queue", "skill", "--threads", "4"]
    )
    assert "warning: storage.pool_size (5)" in crowded.output
    assert launched[-1][launched[-1].index("--threads") + 1] == "4"
    fits = runner.invoke(
        main.app, ["--settings", str(settings), "worker", "--queue", "skill", "--threads", "1"]
    )
    assert "warning" not in fits.output  # 1 thread + heartbeat, recovery, watcher, registry


def test_one_principal_at_its_session_cap_leaves_the_others_served(tmp_path: Path) -> None:
    secret = "bounds-secret-" + "x" * 32
    sections = bounded_sections(tmp_path)
    sections["auth"] = {"mode": "jwt"}
    sections["auth.jwt"] = {"secret": secret}
    sections["mcp"]["max_sessions"] = MAX_SESSIONS + 1  # in all, across both answer modes

    def bearer(subject: str) -> dict[str, str]:
        now = int(time.time())
        claims = {"sub": subject, "roles": ["submitter"], "iss": "skillq", "aud": "skillq-api"}
        token = jwt.encode({**claims, "iat": now, "exp": now + 600}, secret, algorithm="HS256")
        return {"Authorization": f"Bearer {token}"}

    process, base_url = start_api(write_settings(tmp_path, sections), tmp_path)
    try:
        alice, bob = bearer("alice"), bearer("bob")
        held = [mcp_initialize(base_url, headers=alice) for _ in range(MAX_SESSIONS)]
        assert [answer.status_code for answer in held] == [200] * MAX_SESSIONS
        assert mcp_initialize(base_url, headers=alice).status_code == 503
        both = "application/json, text/event-stream"
        assert mcp_initialize(base_url, both, headers=bob).status_code == 200
        # The app-wide cap counts the sessions of every principal and answer mode.
        assert mcp_initialize(base_url, headers=bob).status_code == 503
        with httpx.Client(base_url=base_url, timeout=CONTROL_TIMEOUT_SECS) as client:
            assert client.get("/api/v1/jobs", headers=bob).status_code == 200
    finally:
        process.stop()
