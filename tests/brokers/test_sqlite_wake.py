"""How an idle consumer of the SQLite broker learns of another process's commit
(brokers/sqlite_wake.py): inotify where there is one, polling where there is none.

The consumer's own periodic look (`RECHECK_SECS`) and the watcher's safety poll are set to an
hour here, so a message can only be taken if the wake-up path under test worked.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from dramatiq.message import Message

from skillq.brokers import sqlite_consumer, sqlite_wake
from skillq.brokers.sqlite import SQLiteBroker
from skillq.brokers.sqlite_database import SQLiteConnection
from tests.brokers.test_sqlite_broker import take

ROOT = Path(__file__).resolve().parents[2]
HOUR = 3600.0

ENQUEUE_SCRIPT = """
import sys
from dramatiq.message import Message
from skillq.brokers.sqlite import SQLiteBroker

broker = SQLiteBroker(path=sys.argv[1])
for n in range(int(sys.argv[2])):
    broker.enqueue(Message(queue_name="q", actor_name="job", args=(n,), kwargs={}, options={}))
broker.close()
"""


def enqueue_elsewhere(db: Path, count: int) -> None:
    """Enqueue `count` messages from another process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = textwrap.dedent(ENQUEUE_SCRIPT)
    subprocess.run([sys.executable, "-c", script, str(db), str(count)], env=env, check=True)


def idle_consumer(broker: SQLiteBroker):
    """A consumer that has looked at the empty queue and now sleeps on the generation."""
    consumer = broker.consume("q", prefetch=10, timeout=100)
    assert next(consumer) is None
    assert broker._watcher is not None
    return consumer


@pytest.fixture
def slow_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_consumer, "RECHECK_SECS", HOUR)
    monkeypatch.setattr(sqlite_wake, "SAFETY_POLL_SECS", HOUR)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")
def test_another_process_enqueue_wakes_an_idle_consumer_through_inotify(tmp_path, slow_polls):
    broker = SQLiteBroker(path=tmp_path / "q.db")
    try:
        consumer = idle_consumer(broker)
        assert broker._watcher.subscribed

        # Twice: the second lands in a WAL that the first's producer truncated as it exited.
        for round_ in range(2):
            enqueue_elsewhere(broker.path, 3)
            assert sorted(m.args[0] for m in take(consumer, 3, within=20.0)) == [0, 1, 2], round_
            for message in consumer._ready:
                consumer.ack(message)
    finally:
        broker.close()


class Pokes:
    """Stands for a watcher: counts the events the process's inotify thread hands it."""

    def __init__(self) -> None:
        self.count = 0
        self.subscribed = True
        self.changed = threading.Condition()

    def poke(self) -> None:
        with self.changed:
            self.count += 1
            self.changed.notify_all()

    def wait_for(self, count: int) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.count >= count, timeout=20)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")
def test_a_watcher_hears_only_of_its_own_wal(tmp_path):
    events = sqlite_wake._process_events()
    assert events is not None
    ours, neighbour, last = Pokes(), Pokes(), Pokes()
    for name, pokes in (("q.db-wal", ours), ("jobs.db-wal", neighbour), ("z.db-wal", last)):
        assert events.subscribe(str(tmp_path), name, pokes)  # type: ignore[arg-type]
    try:
        (tmp_path / "q.db-wal").write_bytes(b"x")
        assert ours.wait_for(1)
        (tmp_path / "jobs.db-wal").write_bytes(b"x")  # the store, next door
        (tmp_path / "q.db").write_bytes(b"x")  # the database itself: a checkpoint
        (tmp_path / "z.db-wal").write_bytes(b"x")
        assert last.wait_for(1)  # events come in order: the two before it were handled

        assert (ours.count, neighbour.count) == (1, 1)
    finally:
        for pokes in (ours, neighbour, last):
            events.unsubscribe(pokes)  # type: ignore[arg-type]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")
def test_a_neighbour_file_write_does_not_hold_back_the_next_wake_up(tmp_path):
    """The store's WAL often sits next to the broker's, and a submit writes it just before
    the broker's: only a batch of events that woke a watcher may pause the reading thread
    (the gap that lets back-to-back commits pile up), or every submit's wake-up waited it out.
    An inotify instance of its own, with a gap longer than the test waits: the process's
    one also serves the brokers other tests left open."""
    events = sqlite_wake._Events(wake_gap_secs=30.0)
    ours = Pokes()
    assert events.subscribe(str(tmp_path), "q.db-wal", ours)  # type: ignore[arg-type]
    try:
        for _ in range(3):
            (tmp_path / "jobs.db-wal").write_bytes(b"x")  # the store's commit, not watched
            time.sleep(0.05)  # read by the thread on its own, before ours comes
        (tmp_path / "q.db-wal").write_bytes(b"x")
        assert ours.wait_for(1)
        # The gap after a batch that woke us holds: the next event waits it out.
        (tmp_path / "q.db-wal").write_bytes(b"y")
        with ours.changed:
            assert not ours.changed.wait_for(lambda: ours.count >= 2, timeout=0.5)
    finally:
        events.unsubscribe(ours)  # type: ignore[arg-type]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")
def test_a_commit_that_showed_nothing_new_is_looked_at_again(tmp_path, slow_polls, monkeypatch):
    """A writer restarting a checkpointed WAL moves ``data_version`` before its commit shows.
    When `on_commit` finds nothing new, the watcher looks again by itself, not only at the
    commit's later events: here those wait out an inotify gap of an hour, so only that look
    can find the second row."""
    monkeypatch.setattr(sqlite_wake, "_events", sqlite_wake._Events(wake_gap_secs=HOUR))
    # Two looks after the event: its commit may show at the first (if not at the event's own).
    monkeypatch.setattr(sqlite_wake, "RECHECK_AFTER_SECS", (0.2, 0.5))
    path = tmp_path / "q.db"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("CREATE TABLE t (x TEXT)")
    looks: list[bool] = []
    looked = threading.Condition()

    def on_commit() -> bool:
        with sqlite3.connect(path) as reader:
            found = reader.execute("SELECT 1 FROM t WHERE x = 'wanted'").fetchone() is not None
        with looked:
            looks.append(found)
            looked.notify_all()
        return found

    watcher = sqlite_wake.CommitWatcher(SQLiteConnection(str(path)), on_commit)
    watcher.start()
    try:
        with looked:
            assert looked.wait_for(lambda: len(looks) == 1, timeout=20)  # the first look
        writer.execute("INSERT INTO t VALUES ('other')")
        with looked:
            assert looked.wait_for(lambda: len(looks) == 2, timeout=20)
        assert looks == [False, False]  # a commit, nothing new in it
        writer.execute("INSERT INTO t VALUES ('wanted')")
        with looked:
            assert looked.wait_for(lambda: True in looks, timeout=20)
    finally:
        watcher.stop()
        writer.close()


def test_without_inotify_the_watcher_polls(tmp_path, slow_polls, monkeypatch):
    monkeypatch.setattr(sqlite_wake, "_process_events", lambda: None)
    broker = SQLiteBroker(path=tmp_path / "q.db")
    try:
        consumer = idle_consumer(broker)
        assert not broker._watcher.subscribed

        enqueue_elsewhere(broker.path, 2)

        assert sorted(m.args[0] for m in take(consumer, 2, within=20.0)) == [0, 1]
    finally:
        broker.close()


def test_a_failed_inotify_init_falls_back_to_polling(tmp_path, slow_polls, monkeypatch):
    def no_instance_left(self):
        raise OSError(24, "inotify_init1 failed")

    monkeypatch.setattr(sqlite_wake._Events, "__init__", no_instance_left)
    monkeypatch.setattr(sqlite_wake, "_events", None)
    broker = SQLiteBroker(path=tmp_path / "q.db")
    try:
        consumer = idle_consumer(broker)
        assert not broker._watcher.subscribed

        enqueue_elsewhere(broker.path, 1)

        assert [m.args[0] for m in take(consumer, 1, within=20.0)] == [0]
    finally:
        broker.close()


def test_consumers_started_together_share_one_watcher(tmp_path):
    broker = SQLiteBroker(path=tmp_path / "q.db")
    before = set(threading.enumerate())  # other tests' brokers may still run theirs
    try:
        barrier = threading.Barrier(8)

        def consume() -> None:
            barrier.wait()
            broker.consume("q")

        threads = [threading.Thread(target=consume) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        started = set(threading.enumerate()) - before
        watchers = [t for t in started if t.name == "skillq-sqlite-change-watcher"]
        assert len(watchers) == 1
    finally:
        broker.close()


def test_an_own_enqueue_needs_no_watcher(tmp_path, slow_polls, monkeypatch):
    """This process's enqueue bumps the generation itself, whatever the watcher does."""
    monkeypatch.setattr(sqlite_wake, "_process_events", lambda: None)
    monkeypatch.setattr(sqlite_wake, "FALLBACK_POLL_SECS", HOUR)
    broker = SQLiteBroker(path=tmp_path / "q.db")
    try:
        consumer = idle_consumer(broker)
        broker.enqueue(Message(queue_name="q", actor_name="job", args=(9,), kwargs={}, options={}))
        assert [m.args[0] for m in take(consumer, 1, within=20.0)] == [9]
    finally:
        broker.close()


def test_idle_consumers_block_long_but_return_when_a_worker_stops(tmp_path):
    """`next` blocks for the whole worker_timeout (here an hour), yet a worker's shutdown,
    which only then tells its consumer threads to stop, makes it return."""
    broker = SQLiteBroker(path=tmp_path / "q.db")
    try:
        consumer = broker.consume("q", prefetch=1, timeout=int(HOUR * 1000))
        returned: list = []
        thread = threading.Thread(target=lambda: returned.append(next(consumer)))
        thread.start()
        time.sleep(0.2)  # into its long wait (if not, it returns all the same)

        broker.emit_before("worker_shutdown", None)

        thread.join(20)
        assert returned == [None]
    finally:
        broker.close()


def test_a_consumer_blocking_long_still_takes_a_delayed_message_when_due(tmp_path):
    """No commit marks the moment a delayed message comes due: the consumer's own clock must."""
    broker = SQLiteBroker(path=tmp_path / "q.db")
    try:
        consumer = broker.consume("q", prefetch=1, timeout=int(HOUR * 1000))
        message = Message(queue_name="q", actor_name="job", args=(5,), kwargs={}, options={})
        broker.enqueue(message, delay=300)
        returned: list = []
        thread = threading.Thread(target=lambda: returned.append(next(consumer)), daemon=True)
        thread.start()

        thread.join(20)
        assert [m.args[0] for m in returned] == [5]
    finally:
        broker.close()
