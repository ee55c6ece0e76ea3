"""Another process's commit wakes only the consumers of the queues it added to
(brokers/sqlite_queue_wakes.py), and nothing is left behind for the ones it does not wake."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from dramatiq.message import Message

from skillq.brokers import sqlite_consumer, sqlite_queue_wakes, sqlite_wake
from skillq.brokers.sqlite import SQLiteBroker
from skillq.brokers.sqlite_consumer import SQLiteConsumer
from skillq.brokers.sqlite_queue_wakes import QueueWakes
from tests.brokers.test_sqlite_broker import take, wait_for
from tests.brokers.test_sqlite_wake import HOUR, ROOT, enqueue_elsewhere

#: Claims the queue's message, says so, and gives it back when told to.
REQUEUE_SCRIPT = """
import sys
from skillq.brokers.sqlite import SQLiteBroker

broker = SQLiteBroker(path=sys.argv[1])
consumer = broker.consume("q", prefetch=1, timeout=100)
message = None
while message is None:
    message = next(consumer)
print("claimed", flush=True)
sys.stdin.readline()
consumer.requeue([message])
broker.close()
"""


@pytest.fixture
def slow_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_consumer, "RECHECK_SECS", HOUR)
    monkeypatch.setattr(sqlite_wake, "SAFETY_POLL_SECS", HOUR)


def message(queue_name: str, n: int) -> Message:
    return Message(queue_name=queue_name, actor_name="job", args=(n,), kwargs={}, options={})


def counting_claims(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    claims: dict[str, int] = {}
    claim = SQLiteConsumer._claim

    def counted(self: SQLiteConsumer, limit: int) -> None:
        claims[self.queue_name] = claims.get(self.queue_name, 0) + 1
        claim(self, limit)

    monkeypatch.setattr(SQLiteConsumer, "_claim", counted)
    return claims


def test_new_rows_move_only_their_queues_generation(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "b.db", isolation_level=None)
    for table in ("skillq_messages", "skillq_requeues"):
        conn.execute(f"CREATE TABLE {table} (seq INTEGER PRIMARY KEY AUTOINCREMENT, queue_name)")
    conn.execute("INSERT INTO skillq_requeues (queue_name) VALUES ('old')")
    conn.execute("INSERT INTO skillq_messages (queue_name) VALUES ('old')")
    wakes = QueueWakes()
    wakes.start_from(conn)

    conn.executemany("INSERT INTO skillq_messages (queue_name) VALUES (?)", [("a",), ("a",)])
    wakes.bump_new(conn)
    assert [wakes.generation(q) for q in ("a", "b", "old")] == [1, 0, 0]

    wakes.bump_new(conn)  # nothing new since
    conn.execute("DELETE FROM skillq_messages WHERE queue_name = 'a'")  # acked meanwhile
    wakes.bump_new(conn)
    conn.execute("INSERT INTO skillq_messages (queue_name) VALUES ('b')")
    wakes.bump_new(conn)
    assert [wakes.generation(q) for q in ("a", "b", "old")] == [1, 1, 0]

    conn.execute("INSERT INTO skillq_requeues (queue_name) VALUES ('old')")  # a requeue
    wakes.bump_new(conn)
    wakes.bump_new(conn)
    assert [wakes.generation(q) for q in ("a", "b", "old")] == [1, 1, 1]

    wakes.bump_all()
    assert [wakes.generation(q) for q in ("a", "b", "old")] == [2, 2, 2]
    conn.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")
def test_another_process_enqueue_wakes_only_that_queues_consumer(
    tmp_path: Path, slow_polls: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    claims = counting_claims(monkeypatch)
    broker = SQLiteBroker(path=tmp_path / "q.db")
    try:
        busy = broker.consume("q", prefetch=10, timeout=100)
        idle = broker.consume("other", prefetch=10, timeout=100)
        assert next(busy) is None and next(idle) is None
        assert claims == {"q": 1, "other": 1}

        enqueue_elsewhere(broker.path, 3)
        assert sorted(m.args[0] for m in take(busy, 3, within=20.0)) == [0, 1, 2]
        for _ in range(5):
            assert next(idle) is None  # each waits its 100 ms: nothing woke it

        assert claims["other"] == 1
    finally:
        broker.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")
def test_a_requeue_by_another_process_wakes_the_queues_consumer(
    tmp_path: Path, slow_polls: None
) -> None:
    """A requeue keeps the row's seq: its row in `skillq_requeues` is what wakes a consumer
    elsewhere (the periodic look is an hour away here)."""
    broker = SQLiteBroker(path=tmp_path / "q.db")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    other = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(REQUEUE_SCRIPT), broker.path],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        broker.enqueue(message("q", 7))
        assert other.stdout is not None and other.stdin is not None
        assert other.stdout.readline().strip() == "claimed"
        consumer = broker.consume("q", prefetch=1, timeout=100)
        assert next(consumer) is None  # leased by the other process

        other.stdin.write("requeue\n")
        other.stdin.flush()
        assert other.wait(20) == 0

        assert [m.args[0] for m in take(consumer, 1, within=20.0)] == [7]
    finally:
        other.kill()
        broker.close()


def test_a_commit_whose_rows_cannot_be_read_wakes_every_consumer(
    tmp_path: Path, slow_polls: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreadable(self: QueueWakes, conn: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(sqlite_queue_wakes.QueueWakes, "bump_new", unreadable)
    broker = SQLiteBroker(path=tmp_path / "q.db")
    try:
        consumer = broker.consume("q", prefetch=10, timeout=100)
        assert next(consumer) is None
        before = broker.wakes.generation("q")

        enqueue_elsewhere(broker.path, 1)

        assert wait_for(lambda: broker.wakes.generation("q") > before, within=20.0)
        assert [m.args[0] for m in take(consumer, 1, within=20.0)] == [0]
    finally:
        broker.close()
