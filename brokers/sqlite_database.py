"""The SQLite broker's database: its table, its connections, and the rows it adopts from
dramatiq-sqlite.

Apart from the broker (`skillq.brokers.sqlite`), which decides what to write and when: this
module is how the file is opened and shared (WAL, ``synchronous=NORMAL``, one connection per
process under a lock, "database is locked" as dramatiq's ``ConnectionFailed``), which the
consumer and the commit watcher use too.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from dramatiq.common import current_millis, q_name
from dramatiq.errors import ConnectionFailed
from dramatiq.message import Message

from skillq.storage.sqlite_wal import NO_AUTOCHECKPOINT, start_checkpointer
from skillq.storage.sqlite_write_lock import WriteLockTimeout, shared_write_lock

logger = logging.getLogger(__name__)

#: Priority of messages without a ``broker_priority`` option (same option as RabbitMQ's broker).
DEFAULT_PRIORITY = 5
BUSY_TIMEOUT_SECS = 10.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS skillq_messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL,
    queue_name TEXT NOT NULL,
    priority INTEGER NOT NULL,
    eta INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'leased', 'rejected')),
    lease_owner TEXT,
    lease_expires INTEGER,
    message BLOB NOT NULL,
    mtime INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS skillq_messages_claim ON skillq_messages (queue_name, priority DESC, seq)
    WHERE state IN ('queued', 'leased');
CREATE INDEX IF NOT EXISTS skillq_messages_owner ON skillq_messages (lease_owner)
    WHERE state = 'leased';
CREATE INDEX IF NOT EXISTS skillq_messages_rejected ON skillq_messages (queue_name, mtime)
    WHERE state = 'rejected';
CREATE TABLE IF NOT EXISTS skillq_requeues (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    queue_name TEXT NOT NULL
);
"""
#: A requeue's row in `skillq_requeues` announces it to other processes' watchers
#: (`skillq.brokers.sqlite_queue_wakes`); the table keeps this many of the latest.
REQUEUES_KEPT = 1000


INSERT_MESSAGE = (
    "INSERT INTO skillq_messages (message_id, queue_name, priority, eta, state, message, mtime)"
    " VALUES (?, ?, ?, ?, 'queued', ?, ?)"
)


def _connect(path: str) -> sqlite3.Connection:
    """Autocommit mode, so every statement is its own transaction unless we say BEGIN."""
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_SECS, isolation_level=None, check_same_thread=False
    )
    # Switching a new file to WAL ignores the busy timeout, so processes starting together retry.
    for attempt in range(100):
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError:
            time.sleep(0.05 if attempt < 99 else 0)
    else:
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(NO_AUTOCHECKPOINT)
    start_checkpointer(path)
    return conn


class SQLiteConnection:
    """One connection shared by threads under a lock; reopened after fork or close.

    "database is locked" after the busy timeout becomes dramatiq's ``ConnectionFailed``, so the
    worker retries acks and restarts consumers instead of dropping messages.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        #: Shared by every connection of this process to the file (`shared_write_lock`).
        self.writers = shared_write_lock(path, timeout=BUSY_TIMEOUT_SECS)

    @contextmanager
    def __call__(self) -> Iterator[sqlite3.Connection]:
        if self._pid != os.getpid():  # a forked child must not share the parent's handle
            self._pid, self._lock, self._conn = os.getpid(), threading.Lock(), None
        with self._lock:
            if self._conn is None:
                self._conn = _connect(self.path)
            try:
                yield self._conn
            except sqlite3.OperationalError as exc:
                if self._conn.in_transaction:
                    self._conn.rollback()
                if "locked" in str(exc) or "busy" in str(exc):
                    raise ConnectionFailed(str(exc)) from exc
                raise

    @contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """The connection, for a write statement or transaction, in the file's writers' turn."""
        with self() as conn, self.turn():
            yield conn

    @contextmanager
    def turn(self) -> Iterator[None]:
        """The file's writers' turn (`skillq.storage.sqlite_write_lock`), to be taken inside
        `self()`, never around it: a writer holding the turn takes no connection's lock.
        Another process's writes meet ours there, not on SQLite's busy handler, whose sleeps
        (1 ms and up) were a tenth of the submits' and acks' time on the embedded default."""
        try:
            self.writers.acquire()
        except WriteLockTimeout as error:
            raise ConnectionFailed(str(error)) from error
        try:
            yield
        finally:
            self.writers.release()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None


def message_priority(message: Message) -> int:
    value = message.options.get("broker_priority")
    if not isinstance(value, int) or isinstance(value, bool):
        return DEFAULT_PRIORITY
    return min(max(value, 0), 10)


def database_path(url: str | os.PathLike[str]) -> str:
    """The file of a dramatiq-sqlite style URL (``sqlite:///abs.db``, ``sqlite://rel.db``) or path.

    ``:memory:`` is refused: every connection (one per consumer) would get its own database.
    """
    path = os.fspath(url)
    path = path.removeprefix("sqlite://")
    if not path or path == ":memory:" or path.startswith("file::memory:"):
        raise ValueError(f"SQLiteBroker needs a database file, not {os.fspath(url)!r}")
    return path


def adopt_dramatiq_sqlite_rows(conn: sqlite3.Connection) -> None:
    """Move a dramatiq-sqlite database's live rows into our table, once, in one transaction.

    Queued rows keep their order (rowid) and delayed ones their eta; ``consumed`` rows are
    queued again, since that package never redelivers them (stop its workers first); dead
    letters stay dead letters. Finished (``done``) rows are left where they are.
    """
    if not conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'dramatiq_messages'"
    ).fetchone():
        return
    live = "state IN ('queued', 'consumed', 'rejected')"
    if not conn.execute(f"SELECT 1 FROM dramatiq_messages WHERE {live}").fetchone():
        return  # every later open of a migrated file: a read, no write lock
    conn.execute("BEGIN IMMEDIATE")
    try:
        rows = conn.execute(
            f"SELECT rowid, state, message FROM dramatiq_messages WHERE {live} ORDER BY rowid"
        ).fetchall()
        now = current_millis()
        for rowid, state, data in rows:
            # That package stores JSON whatever the encoder (which is also why it breaks with
            # any other), so rebuild the message and encode it the way our rows are read back.
            try:
                fields = json.loads(data)
                options = fields.pop("options", None) or {}
                eta = options.pop("eta", now)
                fields["queue_name"] = q_name(fields["queue_name"])
                message = Message(**fields, options=options)
            except (ValueError, TypeError, KeyError, AttributeError):
                logger.warning("Left dramatiq-sqlite row %d behind: not a message.", rowid)
                continue
            conn.execute(
                "INSERT INTO skillq_messages (message_id, queue_name, priority, eta, state,"
                " message, mtime) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    message.message_id,
                    message.queue_name,
                    message_priority(message),
                    eta if isinstance(eta, int) else now,
                    "rejected" if state == "rejected" else "queued",
                    message.encode(),
                    now,
                ),
            )
            conn.execute("DELETE FROM dramatiq_messages WHERE rowid = ?", (rowid,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
