"""MCP tasks backed by jobs, with the SDK's client: the 2025-11-25 task methods (sent as typed
requests, since SDK 2.3.0 ships the types but no client runtime) and the 2026-07-28 tasks
extension (a client extension whose result claim follows the task with `tasks/get`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import anyio
import httpx
import mcp_types as types
import pytest
from mcp.client.extension import ClaimContext, ClientExtension, ResultClaim
from pydantic import ConfigDict
from starlette.testclient import TestClient

from skillq.api.app import create_app
from tests.mcp_clients import Rest, connect
from tests.support import start_api, start_worker, store_outage, write_settings

TASKS = "io.modelcontextprotocol/tasks"


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("mcp-tasks")
    settings_path = write_settings(
        directory,
        {
            "server": {"data_dir": str(directory / "data")},
            "workers": {"max_retries": 0},
            # No inline wait: every job tool call becomes a task (or a job handle).
            "mcp": {"inline_wait_secs": 0},
        },
    )
    api, base_url = start_api(settings_path, directory)
    worker = start_worker(settings_path, directory)
    yield base_url
    worker.stop()
    api.stop()


class TaskCreated(types.Result):
    """The tasks extension's flat `CreateTaskResult`."""

    model_config = ConfigDict(extra="allow")
    result_type: Literal["task"]
    task_id: str
    status: str


class DetailedTask(types.Result):
    model_config = ConfigDict(extra="allow")
    task_id: str
    status: str
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class GetTask(types.Request[types.GetTaskRequestParams, Literal["tasks/get"]]):
    method: Literal["tasks/get"] = "tasks/get"
    params: types.GetTaskRequestParams


class Tasks(ClientExtension):
    """A minimal client side of the tasks extension: poll `tasks/get` until terminal."""

    identifier = TASKS

    def __init__(self) -> None:
        self.created: list[TaskCreated] = []
        self.polled: list[str] = []

    def claims(self) -> Sequence[ResultClaim[Any]]:
        return [ResultClaim(result_type="task", model=TaskCreated, resolve=self.follow)]

    async def follow(self, created: TaskCreated, ctx: ClaimContext) -> types.CallToolResult:
        self.created.append(created)
        request = GetTask(params=types.GetTaskRequestParams(task_id=created.task_id))
        with anyio.fail_after(60):
            while True:
                task = await ctx.session.send_request(request, DetailedTask)
                self.polled.append(task.status)
                if task.status == "completed":
                    return types.CallToolResult.model_validate(task.result)
                if task.status != "working":
                    return types.CallToolResult(
                        content=[types.TextContent(type="text", text=str(task.error))],
                        is_error=True,
                    )
                await anyio.sleep(0.05)


def test_2026_a_job_outliving_the_inline_wait_becomes_a_task(system: str) -> None:
    extension = Tasks()

    async def main():
        async with connect("http", base_url=system, extensions=[extension]) as client:
            assert client.protocol_version == "2026-07-28"
            assert TASKS in (client.server_capabilities.extensions or {})
            done = await client.call_tool("sleep", {"seconds": 0.5, "echo": "task"})
            failed = await client.call_tool("sleep", {"seconds": 0, "fail": True})
            return done, failed

    done, failed = anyio.run(main)
    assert not done.is_error
    assert done.structured_content["echo"] == "task"
    assert len(extension.created) == 2
    job_id = extension.created[0].task_id
    assert Rest(system).job(job_id)["state"] == "completed"
    # A failed job is a tool error in tools/call, so its task completed with that result.
    assert extension.polled[-1] == "completed"
    assert failed.is_error and "told to fail" in failed.content[0].text


def test_2026_without_the_extension_the_call_returns_a_job_handle(system: str) -> None:
    async def main():
        async with connect("http", base_url=system) as client:
            return await client.call_tool("sleep", {"seconds": 0.2})

    handle = anyio.run(main)
    assert not handle.is_error
    assert handle.structured_content["follow"]["tools"]["status"]["name"] == "job_status"


class RawSession:
    """A 2025-11-25 Streamable HTTP session spoken as plain JSON-RPC: the SDK client checks
    every tools/call result against `CallToolResult`, so it cannot receive a `CreateTaskResult`.
    """

    def __init__(self, base_url: str | None = None, *, http: httpx.Client | None = None) -> None:
        self.http = http or httpx.Client(base_url=base_url or "", timeout=60)
        self.headers = {"Accept": "application/json, text/event-stream"}
        self.ids = iter(range(1, 1000))
        opened = self.http.post(
            "/mcp", json=self._message("initialize", INITIALIZE), headers=self.headers
        )
        assert opened.status_code == 200, opened.text
        self.initialized = self._answer(opened)
        self.headers["Mcp-Session-Id"] = opened.headers["mcp-session-id"]
        self.headers["MCP-Protocol-Version"] = "2025-11-25"
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert self.http.post("/mcp", json=note, headers=self.headers).status_code == 202

    def _message(self, method: str, params: dict | None) -> dict:
        message = {"jsonrpc": "2.0", "id": next(self.ids), "method": method}
        return message if params is None else {**message, "params": params}

    @staticmethod
    def _answer(response: httpx.Response) -> dict:
        if response.headers["content-type"].startswith("application/json"):
            return response.json()
        data = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        return json.loads(data[-1])

    def request(self, method: str, params: dict | None = None) -> dict:
        response = self.http.post("/mcp", json=self._message(method, params), headers=self.headers)
        assert response.status_code == 200, response.text
        return self._answer(response)

    def messages(self, method: str, params: dict | None = None) -> list[dict]:
        """Every message of the answer's SSE stream: notifications, then the response."""
        response = self.http.post("/mcp", json=self._message(method, params), headers=self.headers)
        assert response.headers["content-type"].startswith("text/event-stream"), response.text
        # Skipping the priming events (an id, a retry, empty data) that start a stream.
        data = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        return [json.loads(item) for item in data if item.strip()]

    def result(self, method: str, params: dict | None = None) -> dict:
        answer = self.request(method, params)
        assert "result" in answer, answer
        return answer["result"]


INITIALIZE = {
    "protocolVersion": "2025-11-25",
    "capabilities": {},
    "clientInfo": {"name": "raw", "version": "0"},
}


def test_2025_task_methods_map_onto_the_job(system: str) -> None:
    session = RawSession(system)
    capabilities = session.initialized["result"]["capabilities"]["tasks"]
    assert capabilities == {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}
    tools = {tool["name"]: tool for tool in session.result("tools/list")["tools"]}
    assert tools["sleep"]["execution"] == {"taskSupport": "optional"}
    assert "execution" not in tools["job_status"]

    task = {"ttl": 60_000}
    arguments = {"seconds": 0.5, "echo": "t"}
    created = session.result("tools/call", {"name": "sleep", "arguments": arguments, "task": task})
    task_id = created["task"]["taskId"]
    assert created["task"]["status"] == "working"
    assert created["task"]["ttl"] == 24 * 3600 * 1000  # the job's own TTL
    assert Rest(system).job(task_id)["type"] == "sleep"  # the job exists before the answer

    got = session.result("tasks/get", {"taskId": task_id})
    assert got["taskId"] == task_id and got["status"] in ("working", "completed")
    payload = session.result("tasks/result", {"taskId": task_id})
    assert payload["structuredContent"]["echo"] == "t"
    assert payload["_meta"]["io.modelcontextprotocol/related-task"] == {"taskId": task_id}
    assert session.result("tasks/get", {"taskId": task_id})["status"] == "completed"
    listed = session.result("tasks/list")
    assert task_id in {listed_task["taskId"] for listed_task in listed["tasks"]}

    slow = {"name": "sleep", "arguments": {"seconds": 1.5, "steps": 6}, "task": task}
    slow_id = session.result("tools/call", slow)["task"]["taskId"]
    params = {"taskId": slow_id, "_meta": {"progressToken": "result-progress"}}
    *notes, answer = session.messages("tasks/result", params)
    assert answer["result"]["structuredContent"]["steps"] == 6
    assert notes and {note["params"]["progressToken"] for note in notes} == {"result-progress"}

    long = {"name": "sleep", "arguments": {"seconds": 30, "steps": 300}, "task": task}
    long_id = session.result("tools/call", long)["task"]["taskId"]
    cancelled = session.result("tasks/cancel", {"taskId": long_id})
    # A pending job is cancelled at once; for a running one the answer waits for its worker.
    assert cancelled["status"] == "cancelled"
    assert Rest(system).wait_state(long_id, "cancelled")["state"] == "cancelled"
    assert session.result("tasks/get", {"taskId": long_id})["status"] == "cancelled"

    unknown = session.request("tasks/get", {"taskId": "nope"})
    assert unknown["error"]["code"] == types.INVALID_PARAMS
    bad = {"name": "sleep", "arguments": {"seconds": "x"}, "task": task}
    refused = session.request("tools/call", bad)
    assert refused["error"]["code"] == types.INVALID_PARAMS
    assert "params.seconds" in json.dumps(refused["error"]["data"])
    immediate = {"name": "list_jobs", "arguments": {}, "task": task}
    assert session.request("tools/call", immediate)["error"]["code"] == types.METHOD_NOT_FOUND


def _modern(http: httpx.Client, method: str, params: dict, name: str | None = None) -> dict:
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {"extensions": {TASKS: {}}},
    }
    headers = {
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": method,
    }
    if name is not None:
        headers["Mcp-Name"] = name
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": meta}}
    response = http.post("/mcp", json=body, headers=headers)
    answer = RawSession._answer(response)
    # The 2026 wire gives an error answer an HTTP error status too (-32602 -> 400).
    assert response.status_code == (400 if "error" in answer else 200), response.text
    return answer


def test_2026_tasks_get_and_cancel(system: str) -> None:
    with httpx.Client(base_url=system, timeout=60) as http:
        call = {"name": "sleep", "arguments": {"seconds": 30, "steps": 300}}
        created = _modern(http, "tools/call", call, name="sleep")["result"]
        assert created["resultType"] == "task"
        assert created["status"] == "working" and created["pollIntervalMs"] == 1000
        task = {"taskId": created["taskId"]}
        got = _modern(http, "tasks/get", task)["result"]
        assert got["status"] == "working" and got["ttlMs"] == 24 * 3600 * 1000
        acknowledged = _modern(http, "tasks/cancel", task)["result"]
        assert acknowledged["resultType"] == "complete"
        Rest(system).wait_state(created["taskId"], "cancelled")
        assert _modern(http, "tasks/get", task)["result"]["status"] == "cancelled"
        unknown = _modern(http, "tasks/get", {"taskId": "nope"})
        assert unknown["error"]["code"] == types.INVALID_PARAMS


@pytest.fixture
def in_process() -> Iterator[TestClient]:
    """The app in this process (no worker), so the test can take its store away."""
    with TestClient(create_app(), base_url="http://127.0.0.1") as client:
        yield client


def assert_unavailable(answer: dict) -> None:
    """Reported as the server's trouble (worth a retry), never as the client's params."""
    assert "error" in answer, answer
    assert answer["error"]["code"] == types.INTERNAL_ERROR, answer
    assert answer["error"]["data"]["code"] == "service_unavailable", answer


def test_a_store_outage_during_a_task_call_is_unavailable_not_invalid_params(
    in_process: TestClient,
) -> None:
    session = RawSession(http=in_process)
    task = {"ttl": 60_000}
    call = {"name": "sleep", "arguments": {"seconds": 0}, "task": task}
    task_id = session.result("tools/call", call)["task"]["taskId"]
    with store_outage():
        assert_unavailable(session.request("tools/call", call))
        for method in ("tasks/get", "tasks/result", "tasks/cancel"):
            assert_unavailable(session.request(method, {"taskId": task_id}))
        assert_unavailable(session.request("tasks/list"))
        plain = session.result("tools/call", {"name": "sleep", "arguments": {"seconds": 0}})
        assert plain["isError"] is True
        assert plain["structuredContent"]["error"]["code"] == "service_unavailable"
    # The store is back: the same task answers again, and an unknown one is still -32602.
    assert session.result("tasks/get", {"taskId": task_id})["taskId"] == task_id
    unknown = session.request("tasks/get", {"taskId": "nope"})
    assert unknown["error"]["code"] == types.INVALID_PARAMS
    assert unknown["error"]["data"]["code"] == "not_found"


def test_a_broker_outage_during_a_task_call_is_unavailable_not_invalid_params(
    in_process: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = RawSession(http=in_process)
    broker = in_process.app.state.coordinator.broker

    def refuse(message: Any, *, delay: int | None = None) -> Any:
        raise ConnectionError("the broker refused the connection")

    monkeypatch.setattr(broker, "enqueue", refuse)
    call = {"name": "sleep", "arguments": {"seconds": 0}, "task": {"ttl": 60_000}}
    answer = session.request("tools/call", call)
    assert_unavailable(answer)
    assert "broker" in answer["error"]["message"]
