"""A SQLite broker for Dramatiq that keeps dramatiq-sqlite's promise: no server to run.

dramatiq-sqlite 0.1.0 loses jobs (broken requeue, no lease after a crash, retries overwritten by
the previous attempt's ack) and is slow (100 ms polling, a prefetch back-off that never resets).
This subclass keeps the package's class as its base, so code that checks for it still works, but
replaces every method that touches the database, using its own table ``skillq_messages``.

Durability: WAL with ``synchronous=NORMAL``. A process crash loses nothing; a power loss can lose
the last few commits. We accept that because an fsync per enqueue/ack would cap throughput at the
disk's flush rate, and the producers that cannot tolerate it should use RabbitMQ.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import dramatiq_sqlite
from dramatiq.broker import Broker, Consumer, MessageProxy
from dramatiq.common import current_millis, q_name
from dramatiq.errors import ConnectionFailed, QueueJoinTimeout
from dramatiq.message import Message
from dramatiq.middleware import Middleware

from skillq.storage.sqlite_wal import NO_AUTOCHECKPOINT, start_checkpointer

#: Priority of messages without a ``broker_priority`` option (same option as RabbitMQ's broker).
DEFAULT_PRIORITY = 5
#: How often an idle consumer looks for commits by other processes (``PRAGMA data_version``).
IDLE_POLL_SECS = 0.005
#: ``__next__`` returns None at least this often so dramatiq's consumer loop can do housekeeping.
MAX_BLOCK_SECS = 0.1
#: An idle consumer runs the claim query at least this often even if nothing seems to change.
RECHECK_SECS = 1.0
#: Most rows claimed per round trip, so one consumer cannot empty a queue into its memory.
MAX_BATCH = 32
BUSY_TIMEOUT_SECS = 10.0

_SCHEMA = """
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
"""

# A row is claimable when it is queued and due, or when its lease ran out (its owner died).
# The redundant ``state IN`` term lets SQLite use the partial index.
_CLAIMABLE = """queue_name = :queue AND state IN ('queued', 'leased')
    AND ((state = 'queued' AND eta <= :now) OR (state = 'leased' AND lease_expires < :now))"""


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


class _Connection:
    """One connection shared by threads under a lock; reopened after fork or close.

    "database is locked" after the busy timeout becomes dramatiq's ``ConnectionFailed``, so the
    worker retries acks and restarts consumers instead of dropping messages.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

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

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None


def _priority(message: Message) -> int:
    value = message.options.get("broker_priority")
    if not isinstance(value, int) or isinstance(value, bool):
        return DEFAULT_PRIORITY
    return min(max(value, 0), 10)


class SQLiteBroker(dramatiq_sqlite.SQLiteBroker):
    """Leases, priority + FIFO order, prompt wake-ups and one row per enqueue.

    Acked rows are deleted at once rather than kept as ``done``: dramatiq never reads them back
    (results live in a result backend), and a table that holds only live work keeps the claim
    index small. Rejected rows (dead letters) stay until ``purge_dead_letters``.

    Delayed messages are stored in their own queue with an ``eta`` and only become claimable when
    due, so no ``.DQ`` delay queues are declared and a crash cannot strand a delayed message in
    some worker's memory.
    """

    def __init__(
        self,
        *,
        path: str | os.PathLike[str],
        lease_secs: float = 30.0,
        middleware: list[Middleware] | None = None,
    ) -> None:
        # The package's __init__ would open its own connection and create its own tables.
        Broker.__init__(self, middleware=middleware)
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self.db_url = self.path
        self.backend = None
        self.lease_secs = lease_secs
        self._db = _Connection(self.path)
        with self._db() as conn:
            conn.executescript(_SCHEMA)
        self._changed = threading.Condition()
        self._generation = 0
        self._owner_pid = -1
        self._owner = ""
        self._closed = threading.Event()
        self._renewer: threading.Thread | None = None

    @property
    def lease_owner(self) -> str:
        """Per process, so leases of a dead worker process are told apart from live ones."""
        if self._owner_pid != os.getpid():
            self._owner_pid = os.getpid()
            self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        return self._owner

    def declare_queue(self, queue_name: str) -> None:
        if queue_name not in self.queues:
            self.emit_before("declare_queue", queue_name)
            self.queues[queue_name] = True
            self.emit_after("declare_queue", queue_name)

    def enqueue(self, message: Message, *, delay: int | None = None) -> Message:
        queue_name = q_name(message.queue_name)
        if queue_name != message.queue_name:
            message = message.copy(queue_name=queue_name)
        self.emit_before("enqueue", message, delay)
        now = current_millis()
        row = (message.message_id, queue_name, _priority(message), now + max(delay or 0, 0))
        with self._db() as conn:
            conn.execute(
                "INSERT INTO skillq_messages (message_id, queue_name, priority, eta, state,"
                " message, mtime) VALUES (?, ?, ?, ?, 'queued', ?, ?)",
                (*row, message.encode(), now),
            )
        self._notify()
        self.emit_after("enqueue", message, delay)
        return message

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 30000) -> SQLiteConsumer:
        self._start_renewer()
        return SQLiteConsumer(self, q_name(queue_name), prefetch=prefetch, timeout=timeout)

    def flush(self, queue_name: str) -> None:
        with self._db() as conn:
            conn.execute("DELETE FROM skillq_messages WHERE queue_name = ?", (q_name(queue_name),))

    def flush_all(self) -> None:
        with self._db() as conn:
            conn.execute("DELETE FROM skillq_messages")

    def join(self, queue_name: str, *, timeout: int | None = None) -> None:
        """Wait until the queue has no queued or leased rows (``timeout`` in ms, like dramatiq)."""
        deadline = None if timeout is None else time.monotonic() + timeout / 1000
        while True:
            with self._db() as conn:
                (active,) = conn.execute(
                    "SELECT COUNT(*) FROM skillq_messages"
                    " WHERE queue_name = ? AND state IN ('queued', 'leased')",
                    (q_name(queue_name),),
                ).fetchone()
            if not active:
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise QueueJoinTimeout(queue_name)
            time.sleep(0.005)

    def dead_letters(self, queue_name: str) -> list[Message]:
        """Rejected messages, oldest first, as last seen by the worker (with retry options)."""
        with self._db() as conn:
            rows = conn.execute(
                "SELECT message FROM skillq_messages WHERE queue_name = ? AND state = 'rejected'"
                " ORDER BY seq",
                (q_name(queue_name),),
            ).fetchall()
        return [Message.decode(bytes(row[0])) for row in rows]

    def purge_dead_letters(self, older_than_secs: float) -> int:
        """Delete rejected rows older than this; returns how many. Acked rows need no purge."""
        cutoff = current_millis() - int(older_than_secs * 1000)
        with self._db() as conn:
            cursor = conn.execute(
                "DELETE FROM skillq_messages WHERE state = 'rejected' AND mtime < ?", (cutoff,)
            )
            return cursor.rowcount

    def close(self) -> None:
        self._closed.set()
        if self._renewer is not None and self._renewer is not threading.current_thread():
            self._renewer.join(timeout=5)
        self._db.close()

    def _notify(self) -> None:
        """Wake this process's idle consumers at once; other processes see ``data_version``."""
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def _wait_for_enqueue(self, seen_generation: int, timeout: float) -> None:
        with self._changed:
            if self._generation == seen_generation:
                self._changed.wait(timeout)

    def _start_renewer(self) -> None:
        """One thread per process extends all of its leases, so only dead processes lose them.

        It renews by owner rather than by row, so messages handed over by a consumer that was
        restarted (dramatiq acks them through the new one) keep their lease too.
        """
        if self._renewer is not None and self._renewer.is_alive():
            return
        self._closed.clear()
        self._renewer = threading.Thread(target=self._renew_leases, daemon=True)
        self._renewer.name = "skillq-sqlite-lease-renewer"
        self._renewer.start()

    def _renew_leases(self) -> None:
        while not self._closed.wait(self.lease_secs / 3):
            try:
                with self._db() as conn:
                    conn.execute(
                        "UPDATE skillq_messages SET lease_expires = ?"
                        " WHERE lease_owner = ? AND state = 'leased'",
                        (current_millis() + int(self.lease_secs * 1000), self.lease_owner),
                    )
            except (sqlite3.Error, ConnectionFailed):
                self.logger.warning("Could not renew leases; retrying.", exc_info=True)


class _LeasedMessage(MessageProxy):
    """Remembers the exact row claimed, so an ack cannot hit a retry with the same message id."""

    def __init__(self, message: Message, seq: int, owner: str) -> None:
        super().__init__(message)
        self.seq = seq
        self.lease_owner = owner


class SQLiteConsumer(Consumer):
    """Claims rows atomically in batches and sleeps on cheap change checks when idle.

    Thread-safe: dramatiq acks and nacks from its worker threads.
    """

    def __init__(self, broker: SQLiteBroker, queue_name: str, *, prefetch: int, timeout: int):
        self.broker = broker
        self.queue_name = queue_name
        self.prefetch = max(prefetch, 1)
        self.timeout_secs = max(timeout, 0) / 1000
        self._db = _Connection(broker.path)
        self._slots = threading.Condition()  # guards _leased; notified when a slot frees up
        self._leased: set[int] = set()
        self._ready: deque[_LeasedMessage] = deque()
        self._seen: tuple[int, int] | None = None
        self._next_check = 0.0

    def __next__(self) -> MessageProxy | None:
        deadline = time.monotonic() + min(self.timeout_secs, MAX_BLOCK_SECS)
        while True:
            if self._ready:
                return self._ready.popleft()
            with self._slots:
                free = self.prefetch - len(self._leased)
            generation = self.broker._generation
            if free > 0 and self._worth_claiming(generation):
                self._claim(free)
                if self._ready:
                    return self._ready.popleft()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if free <= 0:
                with self._slots:
                    if len(self._leased) >= self.prefetch:
                        self._slots.wait(remaining)
            else:
                self.broker._wait_for_enqueue(generation, min(remaining, IDLE_POLL_SECS))

    def ack(self, message: MessageProxy) -> None:
        self._finish(message, "DELETE FROM skillq_messages WHERE seq = ? AND lease_owner = ?")

    def nack(self, message: MessageProxy) -> None:
        self._finish(
            message,
            "UPDATE skillq_messages SET state = 'rejected', lease_owner = NULL,"
            " lease_expires = NULL, message = ?, mtime = ? WHERE seq = ? AND lease_owner = ?",
            (message.encode(), current_millis()),
        )

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        """Put rows back where they were (same seq), so a restart does not reorder the queue."""
        leased = [m for m in messages if isinstance(m, _LeasedMessage)]
        if not leased:
            return
        with self._db() as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "UPDATE skillq_messages SET state = 'queued', lease_owner = NULL,"
                " lease_expires = NULL WHERE seq = ? AND lease_owner = ?",
                [(m.seq, m.lease_owner) for m in leased],
            )
            conn.execute("COMMIT")
        self._release(m.seq for m in leased)
        self.broker._notify()

    def close(self) -> None:
        """Return claimed rows dramatiq never saw; the rest stay leased until acked or expired."""
        unseen = list(self._ready)
        self._ready.clear()
        self.requeue(unseen)
        self._db.close()

    def _worth_claiming(self, generation: int) -> bool:
        """True when something may have become claimable since the last look.

        ``data_version`` changes when another connection commits, which covers other
        processes; the generation covers this process without waiting for the next poll;
        ``_next_check`` covers etas and lease expiries coming due.
        """
        with self._db() as conn:
            (data_version,) = conn.execute("PRAGMA data_version").fetchone()
        seen = (generation, data_version)
        if seen == self._seen and time.monotonic() < self._next_check:
            return False
        self._seen = seen
        return True

    def _claim(self, limit: int) -> None:
        now = current_millis()
        params = {"queue": self.queue_name, "now": now}
        with self._db() as conn:
            # A read first: idle consumers must not take the write lock on every wake-up.
            probe = f"SELECT 1 FROM skillq_messages WHERE {_CLAIMABLE} LIMIT 1"
            if conn.execute(probe, params).fetchone():
                rows = conn.execute(
                    "UPDATE skillq_messages SET state = 'leased', lease_owner = :owner,"
                    " lease_expires = :expires, mtime = :now WHERE seq IN (SELECT seq FROM"
                    f" skillq_messages WHERE {_CLAIMABLE} ORDER BY priority DESC, seq"
                    " LIMIT :limit) RETURNING seq, priority, message",
                    {
                        **params,
                        "owner": self.broker.lease_owner,
                        "expires": now + int(self.broker.lease_secs * 1000),
                        "limit": min(limit, MAX_BATCH),
                    },
                ).fetchall()
            else:
                rows = []
            if len(rows) < limit:
                (due,) = conn.execute(
                    "SELECT MIN(CASE state WHEN 'queued' THEN eta ELSE lease_expires + 1 END)"
                    " FROM skillq_messages WHERE queue_name = ? AND state IN ('queued', 'leased')",
                    (self.queue_name,),
                ).fetchone()
                wait = RECHECK_SECS if due is None else max(due - current_millis(), 0) / 1000
                self._next_check = time.monotonic() + min(wait, RECHECK_SECS)
            else:
                self._next_check = 0.0
        # RETURNING order is unspecified, so restore the claim order here.
        rows.sort(key=lambda row: (-row[1], row[0]))
        owner = self.broker.lease_owner
        with self._slots:
            self._leased.update(row[0] for row in rows)
        self._ready.extend(_LeasedMessage(Message.decode(bytes(r[2])), r[0], owner) for r in rows)

    def _finish(self, message: MessageProxy, sql: str, extra: tuple = ()) -> None:
        if not isinstance(message, _LeasedMessage):
            raise TypeError(f"{message!r} was not consumed from {type(self.broker).__name__}")
        with self._db() as conn:
            conn.execute(sql, (*extra, message.seq, message.lease_owner))
        self._release([message.seq])

    def _release(self, seqs: Iterable[int]) -> None:
        with self._slots:
            self._leased.difference_update(seqs)
            self._slots.notify_all()
