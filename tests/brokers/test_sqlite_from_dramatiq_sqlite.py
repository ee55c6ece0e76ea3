"""What a dramatiq-sqlite user keeps when switching to our SQLite broker: the URL, the work."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import dramatiq
import dramatiq_sqlite
import pytest
from dramatiq.message import Message

from skillq.brokers.sqlite import SQLiteBroker


def message(n: int, **options: object) -> Message:
    return Message(queue_name="q", actor_name="job", args=(n,), kwargs={}, options=options)


def drain(broker: SQLiteBroker, queue: str = "q") -> list:
    consumer = broker.consume(queue, prefetch=50, timeout=100)
    got = []
    while (item := next(consumer)) is not None:
        got.append(item)
        consumer.ack(item)
    return got


def test_the_url_forms_of_dramatiq_sqlite_open_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "broker.db"
    SQLiteBroker(url=f"sqlite://{path}").enqueue(message(1))
    SQLiteBroker(url=str(path)).enqueue(message(2))

    assert [m.args[0] for m in drain(SQLiteBroker(path=path))] == [1, 2]


@pytest.mark.parametrize("url", [":memory:", "sqlite://:memory:", "sqlite://", ""])
def test_a_database_that_is_not_a_file_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="needs a database file"):
        SQLiteBroker(url=url)


def test_url_and_path_are_one_or_the_other(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        SQLiteBroker()
    with pytest.raises(TypeError):
        SQLiteBroker(url=str(tmp_path / "a.db"), path=tmp_path / "a.db")


def test_the_first_open_takes_over_a_dramatiq_sqlite_queue(tmp_path: Path) -> None:
    db = tmp_path / "broker.db"
    theirs = dramatiq_sqlite.SQLiteBroker(url=str(db))
    for n in range(3):
        theirs.enqueue(message(n, broker_priority=9 if n == 2 else 5))
    theirs.enqueue(message(3), delay=3_600_000)  # their delay queue, `q.DQ`
    # A job their worker took and never finished (SIGKILL): that package never redelivers it.
    stranded = message(4)
    theirs.enqueue(stranded)
    consumer = theirs.consume("q")
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE dramatiq_messages SET state = 'consumed' WHERE message_id = ?",
            (stranded.message_id,),
        )
        conn.execute(
            "INSERT INTO dramatiq_messages VALUES ('dead', 'q', 'rejected', ?, 0)",
            (message(5).encode().decode(),),
        )
        conn.execute("INSERT INTO dramatiq_messages VALUES ('x', 'q', 'queued', 'not json', 0)")
    del consumer

    ours = SQLiteBroker(url=f"sqlite://{db}")

    # Priority first, then their insertion order; the delayed one keeps its eta; the stranded
    # one runs again; the dead letter stays one; the broken row stays where it was.
    assert [m.args[0] for m in drain(ours)] == [2, 0, 1, 4]
    assert [m.args[0] for m in ours.dead_letters] == [5]
    with sqlite3.connect(db) as conn:
        (eta,) = conn.execute("SELECT eta FROM skillq_messages WHERE state = 'queued'").fetchone()
        left = conn.execute("SELECT message_id FROM dramatiq_messages").fetchall()
    assert eta > dramatiq.common.current_millis() + 3_000_000
    assert left == [("x",)]
    # Adopted once: a second broker on the same file finds nothing new to take over.
    assert drain(SQLiteBroker(path=db)) == []
