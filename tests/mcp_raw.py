"""MCP spoken as raw JSON-RPC over each transport, for tests that send what no SDK client
would (invalid envelopes, non-object arguments, unknown cursors, cancellations) and look at
every message that comes back.

http-2025  a stateful Streamable HTTP session (initialize handshake, 2025-11-25)
http-2026  2026-07-28 per-request envelopes on the same endpoint
sse        legacy HTTP+SSE: a GET stream read by a thread, messages POSTed
stdio      `skillq mcp` as a child process, lines on its stdin and stdout
"""

from __future__ import annotations

import itertools
import json
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx

from tests.support import ROOT, child_env

RAW_TRANSPORTS = ["http-2025", "http-2026", "sse", "stdio"]
ACCEPT = "application/json, text/event-stream"
TASKS_EXTENSION = "io.modelcontextprotocol/tasks"


def sse_messages(text: str) -> list[dict]:
    return [
        json.loads(line[len("data: ") :])
        for line in text.splitlines()
        if line.startswith("data: ") and line[len("data: ") :].strip()
    ]


def http_messages(response: httpx.Response) -> list[dict]:
    if response.headers.get("content-type", "").startswith("application/json"):
        return [response.json()] if response.content else []
    return sse_messages(response.text)


def initialize_params(version: str = "2025-11-25") -> dict:
    return {
        "protocolVersion": version,
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"},
    }


class RawClient:
    """Send one message (`send`), or a request and get its answer (`request`)."""

    ids = itertools.count(1000)

    def request(self, method: str, params: dict | None = None) -> dict:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": next(self.ids), "method": method}
        if params is not None:
            message["params"] = params
        answer = self.send(message)
        assert answer is not None, f"no answer to {method}"
        return answer

    def result(self, method: str, params: dict | None = None) -> dict:
        answer = self.request(method, params)
        assert "result" in answer, answer
        return answer["result"]

    def send(self, message: Any, *, raw: bytes | None = None) -> dict | None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class HttpSession(RawClient):
    def __init__(self, base_url: str, version: str = "2025-11-25") -> None:
        self.http = httpx.Client(base_url=base_url, timeout=60)
        self.headers = {"Accept": ACCEPT}
        params = initialize_params(version)
        opening = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params}
        opened = self.http.post("/mcp", json=opening, headers=self.headers)
        assert opened.status_code == 200, opened.text
        self.initialized = http_messages(opened)[-1]["result"]
        self.headers["Mcp-Session-Id"] = opened.headers["mcp-session-id"]
        self.headers["MCP-Protocol-Version"] = self.initialized["protocolVersion"]
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert self.http.post("/mcp", json=note, headers=self.headers).status_code == 202

    def post(self, message: Any = None, *, raw: bytes | None = None) -> httpx.Response:
        body = raw if raw is not None else json.dumps(message).encode()
        headers = {**self.headers, "Content-Type": "application/json"}
        return self.http.post("/mcp", content=body, headers=headers)

    def send(self, message: Any, *, raw: bytes | None = None) -> dict | None:
        found = http_messages(self.post(message, raw=raw))
        return found[-1] if found else None

    def close(self) -> None:
        self.http.delete("/mcp", headers=self.headers)
        self.http.close()


class ModernHttp(RawClient):
    def __init__(self, base_url: str, *, tasks: bool = False) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=60)
        self.tasks = tasks

    def envelope(self, message: Any) -> tuple[Any, dict[str, str]]:
        headers = {"Accept": ACCEPT, "MCP-Protocol-Version": "2026-07-28"}
        if isinstance(message, dict) and isinstance(message.get("method"), str):
            message = dict(message)
            headers["Mcp-Method"] = message["method"]
            params = dict(message.get("params") or {})
            if message["method"] == "tools/call" and isinstance(params.get("name"), str):
                headers["Mcp-Name"] = params["name"]
            if message["method"].startswith("tasks/") and isinstance(params.get("taskId"), str):
                headers["Mcp-Name"] = params["taskId"]
            capabilities = {"extensions": {TASKS_EXTENSION: {}}} if self.tasks else {}
            params["_meta"] = {
                **params.get("_meta", {}),
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": capabilities,
            }
            message["params"] = params
        return message, headers

    def send(self, message: Any, *, raw: bytes | None = None) -> dict | None:
        message, headers = self.envelope(message)
        body = raw if raw is not None else json.dumps(message).encode()
        headers["Content-Type"] = "application/json"
        found = http_messages(self.http.post("/mcp", content=body, headers=headers))
        return found[-1] if found else None

    def close(self) -> None:
        self.http.close()


class _Lines:
    """Messages arriving on a background reader, matched to requests by id."""

    def __init__(self) -> None:
        self.inbox: queue.Queue[dict] = queue.Queue()
        self.seen: list[dict] = []

    def wait_for(self, predicate, timeout: float = 60) -> dict:
        for message in self.seen:
            if predicate(message):
                return message
        while True:
            message = self.inbox.get(timeout=timeout)
            self.seen.append(message)
            if predicate(message):
                return message

    def answer_to(self, request_id: Any, timeout: float = 60) -> dict:
        return self.wait_for(
            lambda m: m.get("id") == request_id and ("result" in m or "error" in m), timeout
        )


class SseSession(RawClient):
    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=httpx.Timeout(30, read=300))
        self.lines = _Lines()
        endpoint: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(endpoint,), daemon=True)
        self._thread.start()
        self.endpoint = endpoint.get(timeout=30)
        opened = self.request("initialize", initialize_params())
        self.initialized = opened["result"]
        self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def _read(self, endpoint: queue.Queue[str]) -> None:
        try:
            with self.http.stream("GET", "/mcp/sse", headers={"Accept": "text/event-stream"}) as s:
                event = ""
                for line in s.iter_lines():
                    if line.startswith("event: "):
                        event = line[len("event: ") :]
                    elif line.startswith("data: "):
                        data = line[len("data: ") :]
                        if event == "endpoint":
                            endpoint.put(data)
                        else:
                            self.lines.inbox.put(json.loads(data))
        except httpx.HTTPError:
            pass

    def post(self, message: Any = None, *, raw: bytes | None = None) -> httpx.Response:
        body = raw if raw is not None else json.dumps(message).encode()
        headers = {"Content-Type": "application/json"}
        return self.http.post(self.endpoint, content=body, headers=headers)

    def send(self, message: Any, *, raw: bytes | None = None) -> dict | None:
        response = self.post(message, raw=raw)
        if response.status_code != 202:
            return response.json()
        if isinstance(message, dict) and "id" in message and "method" in message:
            return self.lines.answer_to(message["id"])
        return None

    def close(self) -> None:
        self.http.close()


class StdioSession(RawClient):
    def __init__(self, settings_path: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "skillq", "mcp"],
            cwd=ROOT,
            env=child_env(settings_path),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.lines = _Lines()
        self.returned: set[int] = set()
        threading.Thread(target=self._read, daemon=True).start()
        self.initialized = self.request("initialize", initialize_params())["result"]
        self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.strip():
                self.lines.inbox.put(json.loads(line))

    def post(self, message: Any = None, *, raw: bytes | None = None) -> None:
        assert self.process.stdin is not None
        line = raw.decode() if raw is not None else json.dumps(message)
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def send(self, message: Any, *, raw: bytes | None = None) -> dict | None:
        self.post(message, raw=raw)
        if raw is not None or not isinstance(message, dict) or message.get("id") is None:
            # What comes back to an invalid message is the next error answer.
            answer = self.lines.wait_for(lambda m: "error" in m and id(m) not in self.returned)
            self.returned.add(id(answer))
            return answer
        if "method" in message:
            return self.lines.answer_to(message["id"])
        return None

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def open_raw(transport: str, base_url: str, settings_path: Path, **options: Any) -> RawClient:
    if transport == "http-2025":
        return HttpSession(base_url, **options)
    if transport == "http-2026":
        return ModernHttp(base_url, **options)
    if transport == "sse":
        return SseSession(base_url)
    if transport == "stdio":
        return StdioSession(settings_path)
    raise ValueError(transport)
