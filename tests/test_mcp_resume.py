"""Resumable Streamable HTTP streams: event ids and `retry:` on every SSE stream of a session,
and `GET` + `Last-Event-ID` replaying what a client missed, from the store, on the process
that holds the session and on another API process of the same store.

Streamable HTTP only: legacy HTTP+SSE and stdio have no resumption in the specification,
and 2026-07-28 requests have no session to resume.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.mcp_raw import HttpSession
from tests.support import start_api, start_worker, write_settings


@pytest.fixture(scope="module")
def two_apis(tmp_path_factory: pytest.TempPathFactory):
    """Two API processes and a worker on one store."""
    directory = tmp_path_factory.mktemp("mcp-resume")
    settings_path = write_settings(
        directory,
        {"server": {"data_dir": str(directory / "data")}, "mcp": {"inline_wait_secs": 30}},
    )
    first, first_url = start_api(settings_path, directory)
    second, second_url = start_api(settings_path, directory)
    worker = start_worker(settings_path, directory)
    yield first_url, second_url
    worker.stop()
    second.stop()
    first.stop()


def events(response: httpx.Response) -> Iterator[dict]:
    """The SSE events of a streamed response as {"id", "retry", "data"}, as they arrive."""
    event: dict = {}
    for line in response.iter_lines():
        if not line:
            if event:
                yield event
            event = {}
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            event["data"] = json.loads(value) if value.strip() else None
        elif field in ("id", "retry", "event"):
            event[field] = value
    if event:
        yield event


def read_until(response: httpx.Response, done: Callable[[dict], bool]) -> list[dict]:
    seen = []
    for event in events(response):
        seen.append(event)
        if done(event):
            break
    return seen


def _is_answer(event: dict, request_id: int) -> bool:
    data = event.get("data") or {}
    return data.get("id") == request_id and ("result" in data or "error" in data)


def test_a_lost_stream_resumes_with_what_it_missed_on_any_api_process(two_apis) -> None:
    first_url, second_url = two_apis
    session = HttpSession(first_url)
    call = {
        "jsonrpc": "2.0",
        "id": 9,
        "method": "tools/call",
        "params": {
            "name": "sleep",
            "arguments": {"seconds": 1.5, "steps": 5},
            "_meta": {"progressToken": "t"},
        },
    }
    headers = {**session.headers, "Content-Type": "application/json"}
    with session.http.stream("POST", "/mcp", json=call, headers=headers) as response:
        before = read_until(response, lambda e: (e.get("data") or {}).get("method") is not None)
    priming, *_, progress = before
    assert priming["data"] is None and priming["id"] and priming["retry"] == "2000"
    assert progress["id"] and progress["data"]["method"] == "notifications/progress"
    # The client dropped the stream after its first progress; it comes back for the rest.
    resume = {**session.headers, "Last-Event-ID": progress["id"]}
    with session.http.stream("GET", "/mcp", headers=resume) as response:
        assert response.status_code == 200
        after = read_until(response, lambda e: _is_answer(e, 9))
    missed = [e["data"] for e in after if e.get("data")]
    assert missed[-1]["result"]["structuredContent"]["steps"] == 5
    notes = [m["params"]["progress"] for m in missed if m.get("method")]
    assert notes and notes[-1] == 100 and notes[0] > progress["data"]["params"]["progress"]
    assert all(e["id"] for e in after if e.get("data"))

    # Another API process does not hold the session but replays it from the store, whole.
    with httpx.Client(base_url=second_url, timeout=30) as other:
        everything = {**resume, "Last-Event-ID": priming["id"]}
        replayed = other.get("/mcp", headers=everything)
        assert replayed.status_code == 200, replayed.text
        messages = [e["data"] for e in events(replayed) if e.get("data")]
        assert messages[-1]["id"] == 9 and "result" in messages[-1]
        assert len(messages) == len(missed) + 1
        unknown = other.get("/mcp", headers={**resume, "Last-Event-ID": "1" + priming["id"]})
        assert unknown.status_code == 404
        foreign = other.get("/mcp", headers={**everything, "Mcp-Session-Id": "f" * 32})
        assert foreign.status_code == 404
    # The stream ended with its answer: resuming it again replays and ends, no live wait.
    with httpx.Client(base_url=first_url, timeout=30) as again:
        ended = again.get("/mcp", headers={**resume, "Last-Event-ID": priming["id"]})
        assert [e["data"] for e in events(ended) if e.get("data")] == messages
    session.close()


def test_the_get_stream_starts_with_an_event_id_and_retry(two_apis) -> None:
    first_url, _ = two_apis
    session = HttpSession(first_url)
    headers = {**session.headers, "Accept": "text/event-stream"}
    with session.http.stream("GET", "/mcp", headers=headers) as response:
        assert response.status_code == 200
        (priming,) = read_until(response, lambda event: True)
    assert priming["id"] and priming["retry"] == "2000" and priming["data"] is None
    session.close()


def test_sessions_before_2025_11_25_get_no_priming_events(two_apis) -> None:
    """Older clients cannot read an event without data: their streams stay as they were."""
    first_url, _ = two_apis
    session = HttpSession(first_url, version="2025-06-18")
    response = session.post({"jsonrpc": "2.0", "id": 3, "method": "tools/list"})
    assert "retry:" not in response.text and "data: \r\n" not in response.text
    session.close()
