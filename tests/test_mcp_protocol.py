"""MCP to the letter, replayed as raw JSON-RPC against a real API process and worker on every
transport it applies to: invalid envelopes are -32600, non-object arguments are a tool
error, a cancelled request gets no response, unknown cursors are -32602, and tasks follow
each protocol version's method set.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import mcp_types as types
import pytest

from tests.mcp_clients import Rest
from tests.mcp_raw import RAW_TRANSPORTS, HttpSession, ModernHttp, open_raw, sse_messages
from tests.support import start_api, start_worker, wait_for, write_settings


class System:
    def __init__(self, base_url: str, settings_path: Path) -> None:
        self.base_url = base_url
        self.settings_path = settings_path
        self.rest = Rest(base_url)

    def raw(self, transport: str, **options):
        return open_raw(transport, self.base_url, self.settings_path, **options)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("mcp-protocol")
    settings_path = write_settings(
        directory,
        {
            "server": {"data_dir": str(directory / "data")},
            "workers": {"max_retries": 0},
            "mcp": {"inline_wait_secs": 30},
        },
    )
    api, base_url = start_api(settings_path, directory)
    worker = start_worker(settings_path, directory)
    yield System(base_url, settings_path)
    worker.stop()
    api.stop()


@pytest.fixture(params=RAW_TRANSPORTS)
def raw(request: pytest.FixtureRequest, system: System):
    client = system.raw(request.param)
    yield client
    client.close()


INVALID = {
    "no jsonrpc": {"id": 1, "method": "ping"},
    "numeric method": {"jsonrpc": "2.0", "id": 2, "method": 42},
    "null id": {"jsonrpc": "2.0", "id": None, "method": "ping"},
    "batch": [{"jsonrpc": "2.0", "id": 3, "method": "ping"}],
    "empty batch": [],
    "number": 42,
}


def test_invalid_requests_are_invalid_request_errors(raw) -> None:
    for name, message in INVALID.items():
        answer = raw.send(message, raw=json.dumps(message).encode())
        assert answer is not None, name
        error = answer["error"]
        assert error["code"] == types.INVALID_REQUEST, (name, answer)
        assert len(error["message"]) < 120 and "validation" not in error["message"].lower()
        expected_id = message.get("id") if isinstance(message, dict) else None
        assert answer["id"] == expected_id, (name, answer)
    # The session still works afterwards.
    assert "tools" in raw.result("tools/list")


def test_non_object_arguments_are_a_tool_error(raw) -> None:
    for arguments in (["seconds", 1], "x", 7):
        result = raw.result("tools/call", {"name": "sleep", "arguments": arguments})
        assert result["isError"] is True, result
        assert result["structuredContent"]["error"]["code"] == "invalid_params"
        assert "arguments must be an object" in result["content"][0]["text"]


def test_unknown_cursors_are_invalid_params(raw) -> None:
    answer = raw.request("tools/list", {"cursor": "nope"})
    assert answer["error"]["code"] == types.INVALID_PARAMS, answer
    if isinstance(raw, ModernHttp):
        return  # the 2026 tasks extension has no tasks/list
    for cursor in ("nope", "0", "999999", "-1"):
        answer = raw.request("tasks/list", {"cursor": cursor})
        assert answer["error"]["code"] == types.INVALID_PARAMS, (cursor, answer)


def test_progress_reaches_100_before_the_result(raw) -> None:
    """The final notifications/progress is 100 % and comes before the result."""
    if isinstance(raw, ModernHttp | HttpSession):
        body = {
            "jsonrpc": "2.0",
            "id": 77,
            "method": "tools/call",
            "params": {
                "name": "sleep",
                "arguments": {"seconds": 0.4, "steps": 4},
                "_meta": {"progressToken": "p"},
            },
        }
        if isinstance(raw, ModernHttp):
            body, headers = raw.envelope(body)
            response = raw.http.post("/mcp", json=body, headers=headers)
        else:
            response = raw.post(body)
        messages = sse_messages(response.text)
    else:
        raw.post(
            {
                "jsonrpc": "2.0",
                "id": 77,
                "method": "tools/call",
                "params": {
                    "name": "sleep",
                    "arguments": {"seconds": 0.4, "steps": 4},
                    "_meta": {"progressToken": "p"},
                },
            }
        )
        raw.lines.answer_to(77)
        messages = raw.lines.seen
    answer_at = next(i for i, m in enumerate(messages) if m.get("id") == 77)
    progress = [
        m["params"]["progress"]
        for m in messages[:answer_at]
        if m.get("method") == "notifications/progress"
    ]
    assert progress and progress[-1] == 100, messages
    assert not messages[answer_at]["result"].get("isError"), messages[answer_at]


def test_a_cancelled_request_gets_no_response(raw, system: System) -> None:
    if isinstance(raw, ModernHttp):
        pytest.skip("2026-07-28 cancels by closing the response stream (test_mcp.py)")
    call = {
        "jsonrpc": "2.0",
        "id": 55,
        "method": "tools/call",
        "params": {"name": "sleep", "arguments": {"seconds": 30, "steps": 300}},
    }
    cancel = {
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": {"requestId": 55, "reason": "test"},
    }
    if isinstance(raw, HttpSession):
        answered: list[httpx.Response] = []
        thread = threading.Thread(target=lambda: answered.append(raw.post(call)))
        thread.start()
        job_id = wait_for(lambda: _unfinished_sleep(system), what="the call's job")
        assert raw.post(cancel).status_code == 202
        thread.join(timeout=60)
        assert answered, "the call's stream did not end"
        messages = sse_messages(answered[0].text)
        assert not [m for m in messages if m.get("id") == 55], messages
    else:
        raw.post(call)
        job_id = wait_for(lambda: _unfinished_sleep(system), what="the call's job")
        raw.post(cancel)
        assert "result" in raw.request("ping")
        assert not [m for m in raw.lines.seen if m.get("id") == 55], raw.lines.seen
    system.rest.wait_state(job_id, "cancelled")
    if not isinstance(raw, HttpSession):
        assert "result" in raw.request("ping")
        assert not [m for m in raw.lines.seen if m.get("id") == 55], raw.lines.seen


def _timeless(result: dict) -> dict:
    """A sleep job's result without the one value that differs between two runs."""
    result = json.loads(json.dumps(result))
    result["structuredContent"].pop("slept_secs")
    text = json.loads(result["content"][0]["text"])
    text.pop("slept_secs")
    result["content"][0]["text"] = text
    return result


def _unfinished_sleep(system: System) -> str | None:
    jobs = system.rest.jobs(type="sleep", state="pending,running")
    return jobs[0]["id"] if jobs else None


HANDSHAKE = ["http-2025", "sse", "stdio"]


@pytest.mark.parametrize("transport", HANDSHAKE)
def test_tasks_by_the_letter_on_2025_11_25(system: System, transport: str) -> None:
    client = system.raw(transport)
    try:
        assert client.initialized["capabilities"]["tasks"]["cancel"] == {}
        arguments = {"seconds": 0, "echo": {"same": transport}}
        inline = client.result("tools/call", {"name": "sleep", "arguments": arguments})
        task = {"ttl": 60_000}
        created = client.result(
            "tools/call", {"name": "sleep", "arguments": arguments, "task": task}
        )
        task_id = created["task"]["taskId"]
        payload = client.result("tasks/result", {"taskId": task_id})
        # Exactly what tools/call answers, plus the related-task _meta the spec asks for.
        related = payload["_meta"].pop("io.modelcontextprotocol/related-task")
        assert related == {"taskId": task_id}
        for answer in (inline, payload):
            assert answer["_meta"].pop("skillq/job")["state"] == "completed"
        assert _timeless(payload) == _timeless(inline)

        immediate = {"name": "list_jobs", "arguments": {}, "task": task}
        refused = client.request("tools/call", immediate)
        assert refused["error"]["code"] == types.METHOD_NOT_FOUND, refused

        long = {"name": "sleep", "arguments": {"seconds": 30, "steps": 300}, "task": task}
        long_id = client.result("tools/call", long)["task"]["taskId"]
        system.rest.wait_state(long_id, "running")
        cancelled = client.result("tasks/cancel", {"taskId": long_id})
        assert cancelled["status"] == "cancelled", cancelled
        again = client.request("tasks/cancel", {"taskId": long_id})
        assert again["error"]["code"] == types.INVALID_PARAMS, again
    finally:
        client.close()


def test_older_sessions_are_not_offered_tasks(system: System) -> None:
    session = HttpSession(system.base_url, version="2025-06-18")
    try:
        assert session.initialized["protocolVersion"] == "2025-06-18"
        assert "tasks" not in session.initialized["capabilities"]
        tools = session.result("tools/list")["tools"]
        assert not [tool for tool in tools if "execution" in tool]
        for method in ("tasks/get", "tasks/list", "tasks/result", "tasks/cancel"):
            answer = session.request(method, {"taskId": "x"})
            assert answer["error"]["code"] == types.METHOD_NOT_FOUND, (method, answer)
        # `task` means nothing before 2025-11-25: the call runs as any other.
        call = {"name": "sleep", "arguments": {"seconds": 0}, "task": {"ttl": 1000}}
        assert session.result("tools/call", call)["structuredContent"]["steps"] == 10
    finally:
        session.close()


def test_the_2026_extension_has_its_own_method_set(system: System) -> None:
    plain = ModernHttp(system.base_url)
    tasks = ModernHttp(system.base_url, tasks=True)
    try:
        discovered = plain.result("server/discover")
        assert "tasks" not in discovered["capabilities"]
        assert "io.modelcontextprotocol/tasks" in discovered["capabilities"]["extensions"]
        assert not [tool for tool in plain.result("tools/list")["tools"] if "execution" in tool]
        job = system.rest.http.post("/api/v1/jobs", json={"type": "sleep", "params": {}})
        task_id = job.json()["id"]
        system.rest.wait_state(task_id, "completed")
        for method in ("tasks/get", "tasks/cancel", "tasks/update"):
            answer = plain.request(method, {"taskId": task_id})
            assert answer["error"]["code"] == types.METHOD_NOT_FOUND, (method, answer)
        for method in ("tasks/result", "tasks/list"):
            answer = tasks.request(method, {"taskId": task_id})
            assert answer["error"]["code"] == types.METHOD_NOT_FOUND, (method, answer)
        got = tasks.result("tasks/get", {"taskId": task_id})
        assert got["resultType"] == "complete" and got["status"] == "completed"
        assert {"ttlMs", "pollIntervalMs", "createdAt", "lastUpdatedAt"} <= set(got)
        assert not {"ttl", "pollInterval"} & set(got)
        update = {"taskId": task_id, "inputResponses": {}}
        assert tasks.request("tasks/update", update)["error"]["code"] == types.INVALID_PARAMS
    finally:
        plain.close()
        tasks.close()
