"""The consuming side of our SQLite broker: atomic batch claims, leases, prompt wake-ups.

Apart from the broker (`skillq.brokers.sqlite`) because the two change for different
reasons: the broker decides what a row is (schema, enqueue, dead letters, leases kept
alive), the consumer how rows are taken and given back as fast as dramatiq's worker asks.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from dramatiq.broker import Consumer, MessageProxy
from dramatiq.common import current_millis
from dramatiq.message import Message

from skillq.brokers.sqlite_database import REQUEUES_KEPT

if TYPE_CHECKING:
    from skillq.brokers.sqlite import SQLiteBroker
    from skillq.brokers.sqlite_database import SQLiteConnection

#: Once a worker of the process is stopping, ``__next__`` returns None at least this often, so
#: dramatiq's consumer loop sees the stop soon; until then it blocks for dramatiq's whole
#: ``worker_timeout`` (1 s by default), since every return costs an idle consumer CPU.
STOPPING_BLOCK_SECS = 0.1
#: An idle consumer runs the claim query at least this often even if nothing seems to change.
RECHECK_SECS = 1.0
#: Most rows claimed per round trip, so one consumer cannot empty a queue into its memory.
MAX_BATCH = 32

# A row is claimable when it is queued and due, or when its lease ran out (its owner died).
# The redundant ``state IN`` term lets SQLite use the partial index.
_CLAIMABLE = """queue_name = :queue AND state IN ('queued', 'leased')
    AND ((state = 'queued' AND eta <= :now) OR (state = 'leased' AND lease_expires < :now))"""


class LeasedMessage(MessageProxy):
    """Remembers the exact row claimed, so an ack cannot hit a retry with the same message id."""

    def __init__(self, message: Message, seq: int, owner: str) -> None:
        super().__init__(message)
        self.seq = seq
        self.lease_owner = owner


class SQLiteConsumer(Consumer):
    """Claims rows atomically in batches and sleeps on cheap change checks when idle.

    Thread-safe: dramatiq acks and nacks from its worker threads.
    """

    def __init__(
        self,
        broker: SQLiteBroker,
        queue_name: str,
        db: SQLiteConnection,
        *,
        prefetch: int,
        timeout: int,
    ) -> None:
        self.broker = broker
        self.queue_name = queue_name
        self.prefetch = max(prefetch, 1)
        self.timeout_secs = max(timeout, 0) / 1000
        self._db = db
        self._slots = threading.Condition()  # guards _leased; notified when a slot frees up
        self._leased: set[int] = set()
        self._ready: deque[LeasedMessage] = deque()
        self._seen: int | None = None
        self._next_check = 0.0

    def __next__(self) -> MessageProxy | None:
        started = time.monotonic()
        while True:
            if self._ready:
                return self._ready.popleft()
            with self._slots:
                free = self.prefetch - len(self._leased)
            generation = self.broker.wakes.generation(self.queue_name)
            if free > 0 and self._worth_claiming(generation):
                self._claim(free)
                if self._ready:
                    return self._ready.popleft()
            block = self.timeout_secs
            if self.broker.stopping:  # the broker wakes us when it starts
                block = min(block, STOPPING_BLOCK_SECS)
            remaining = started + block - time.monotonic()
            if remaining <= 0:
                return None
            if free <= 0:
                with self._slots:
                    if len(self._leased) >= self.prefetch:
                        self._slots.wait(remaining)
            else:
                # The broker's watcher bumps the queue's generation when another connection
                # adds to it; an eta or a lease expiry coming due (`_next_check`) is no commit.
                until_due = max(self._next_check - time.monotonic(), 0.0)
                self.broker.wait_for_enqueue(self.queue_name, generation, min(remaining, until_due))

    def ack(self, message: MessageProxy) -> None:
        self._finish(message, "DELETE FROM skillq_messages WHERE seq = ? AND lease_owner = ?")

    def nack(self, message: MessageProxy) -> None:
        """Keep the row as a dead letter, and its exception in memory for ``broker.join``.

        The exception is remembered first: `join` may see the rejected row the moment it
        commits, and must find its exception then."""
        if isinstance(message, LeasedMessage):
            self.broker.failures.remember(message.seq, message._exception)
        self._finish(
            message,
            "UPDATE skillq_messages SET state = 'rejected', lease_owner = NULL,"
            " lease_expires = NULL, message = ?, mtime = ? WHERE seq = ? AND lease_owner = ?",
            (message.encode(), current_millis()),
        )

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        """Put rows back where they were (same seq), so a restart does not reorder the queue."""
        leased = [m for m in messages if isinstance(m, LeasedMessage)]
        if not leased:
            return
        with self._db.writing() as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "UPDATE skillq_messages SET state = 'queued', lease_owner = NULL,"
                " lease_expires = NULL WHERE seq = ? AND lease_owner = ?",
                [(m.seq, m.lease_owner) for m in leased],
            )
            # The rows keep their seq, so other processes' watchers learn of them from here.
            cursor = conn.execute(
                "INSERT INTO skillq_requeues (queue_name) VALUES (?)", (self.queue_name,)
            )
            conn.execute(
                "DELETE FROM skillq_requeues WHERE seq <= ?",
                (cursor.lastrowid - REQUEUES_KEPT,),
            )
            conn.execute("COMMIT")
        self._release(m.seq for m in leased)
        self.broker.notify()

    def close(self) -> None:
        """Return claimed rows dramatiq never saw; the rest stay leased until acked or expired."""
        unseen = list(self._ready)
        self._ready.clear()
        self.requeue(unseen)
        self._db.close()

    def _worth_claiming(self, generation: int) -> bool:
        """True when something may have become claimable since the last look.

        The queue's generation moves when this process enqueues and when its watcher sees
        another connection add to the queue (`skillq.brokers.sqlite_queue_wakes`);
        ``_next_check`` covers etas and lease expiries coming due. One watcher per process
        serves all consumers (`skillq.brokers.sqlite_wake`): ten idle consumers each polling
        ``data_version`` cost a skillq worker ~5 % of a core doing nothing."""
        if generation == self._seen and time.monotonic() < self._next_check:
            return False
        self._seen = generation
        return True

    def _claim(self, limit: int) -> None:
        now = current_millis()
        params = {"queue": self.queue_name, "now": now}
        with self._db() as conn:
            # A read first: idle consumers must not take the write lock on every wake-up.
            probe = f"SELECT 1 FROM skillq_messages WHERE {_CLAIMABLE} LIMIT 1"
            if conn.execute(probe, params).fetchone():
                with self._db.turn():
                    rows = self._take(conn, params, limit)
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
        self._ready.extend(LeasedMessage(Message.decode(bytes(r[2])), r[0], owner) for r in rows)

    def _take(self, conn: sqlite3.Connection, params: dict[str, Any], limit: int) -> list[Any]:
        """Lease up to `limit` claimable rows (the caller holds the writers' turn)."""
        return conn.execute(
            "UPDATE skillq_messages SET state = 'leased', lease_owner = :owner,"
            " lease_expires = :expires, mtime = :now WHERE seq IN (SELECT seq FROM"
            f" skillq_messages WHERE {_CLAIMABLE} ORDER BY priority DESC, seq"
            " LIMIT :limit) RETURNING seq, priority, message",
            {
                **params,
                "owner": self.broker.lease_owner,
                "expires": params["now"] + int(self.broker.lease_secs * 1000),
                "limit": min(limit, MAX_BATCH),
            },
        ).fetchall()

    def _finish(self, message: MessageProxy, sql: str, extra: tuple = ()) -> None:
        if not isinstance(message, LeasedMessage):
            raise TypeError(f"{message!r} was not consumed from {type(self.broker).__name__}")
        with self._db.writing() as conn:
            conn.execute(sql, (*extra, message.seq, message.lease_owner))
        self._release([message.seq])

    def _release(self, seqs: Iterable[int]) -> None:
        with self._slots:
            self._leased.difference_update(seqs)
            self._slots.notify_all()
