"""The MCP stream event table on SQLite and PostgreSQL: replays stay inside their session and
owner, streams end with their answer, and sessions are bounded and purged."""

from __future__ import annotations

from datetime import timedelta

import pytest

from skillq.settings import StorageSettings
from skillq.storage import mcp_events
from skillq.storage.models import utcnow


def test_a_replay_reads_only_its_own_sessions_stream_after_the_event(
    store: StorageSettings,
) -> None:
    priming = mcp_events.append("s1", "7", "alice", None)
    note = mcp_events.append("s1", "7", "alice", '{"method": "n"}')
    mcp_events.append("s1", "_GET_stream", "alice", '{"method": "other stream"}')
    mcp_events.append("s2", "7", "alice", '{"method": "other session"}')
    answer = mcp_events.append("s1", "7", "alice", '{"id": 7, "result": {}}', final=True)

    replay = mcp_events.replay_after(priming, "s1", "alice")
    assert replay is not None and replay.stream_id == "7" and replay.ended
    assert replay.events == [(note, '{"method": "n"}'), (answer, '{"id": 7, "result": {}}')]
    # Another session's or another owner's view of the same event id is nothing.
    assert mcp_events.replay_after(priming, "s2", "alice") is None
    assert mcp_events.replay_after(priming, "s1", "mallory") is None
    assert mcp_events.replay_after(answer + 1000, "s1", "alice") is None
    get_stream = mcp_events.replay_after(note, "s1", "alice")
    assert get_stream is not None and get_stream.events[-1][0] == answer

    mcp_events.forget_session("s1")
    assert mcp_events.replay_after(priming, "s1", "alice") is None
    assert mcp_events.session_owner("s2") == "alice"


def test_sessions_are_bounded_and_stale_events_purged(
    store: StorageSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mcp_events, "MAX_EVENTS_PER_SESSION", 5)
    monkeypatch.setattr(mcp_events, "_TRIM_EVERY", 1)
    first = mcp_events.append("s", "1", "o", None)
    for _ in range(9):
        mcp_events.append("s", "1", "o", '{"method": "n"}')
    assert mcp_events.replay_after(first, "s", "o") is None  # trimmed away
    kept = mcp_events.McpEvent.select().where(mcp_events.McpEvent.session_id == "s").count()
    assert kept == 5
    assert mcp_events.purge(utcnow() - timedelta(hours=1)) == 0
    assert mcp_events.purge(utcnow() + timedelta(seconds=1)) == 5
