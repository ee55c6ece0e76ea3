"""A SQLite broker for Dramatiq: no server to run, and no job lost to a crash or a restart.

Our own class on `dramatiq.Broker`, not a subclass of dramatiq-sqlite's: none of that
package's code was right to build on (its requeue is an SQL syntax error, a claim has no
lease so a crashed worker's job never runs again, a retry is overwritten by the previous
attempt's ack, polling sleeps 100 ms and its prefetch back-off never resets). What its users
expect stays: ``SQLiteBroker(url="sqlite:///path/broker.db")`` or ``path=``, and at the first
open, the live rows of its ``dramatiq_messages`` table move into ours (``skillq_messages``).

Durability: WAL with ``synchronous=NORMAL``. A process crash loses nothing; a power loss can lose
the last few commits. We accept that because an fsync per enqueue/ack would cap throughput at the
disk's flush rate, and the producers that cannot tolerate it should use RabbitMQ.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import threading
import time
import uuid

from dramatiq.broker import Broker
from dramatiq.common import current_millis, q_name
from dramatiq.errors import ConnectionFailed, QueueJoinTimeout
from dramatiq.message import Message
from dramatiq.middleware import Middleware

from skillq.brokers.batch_sends import NotAllSent
from skillq.brokers.failures import RecentFailures
from skillq.brokers.middleware_hooks import OverriddenHooks
from skillq.brokers.sqlite_consumer import SQLiteConsumer
from skillq.brokers.sqlite_database import (
    INSERT_MESSAGE,
    SCHEMA,
    SQLiteConnection,
    adopt_dramatiq_sqlite_rows,
    database_path,
    message_priority,
)
from skillq.brokers.sqlite_queue_wakes import QueueWakes
from skillq.brokers.sqlite_wake import CommitWatcher

logger = logging.getLogger(__name__)

#: How often `join` looks at the queue again, in seconds.
JOIN_POLL_SECS = 0.005


class SQLiteBroker(OverriddenHooks, Broker):
    """Leases, priority + FIFO order, prompt wake-ups and one row per enqueue.

    Parameters:
      url: a dramatiq-sqlite style ``sqlite:///path`` URL, or give ``path`` instead.
      path: the database file; its folder is created.
      lease_secs: how long a claimed message stays with its worker process without a renewal
        (each process renews its own every third of it), so a dead process's messages go
        back to the queue after at most this long.
      fail_fast_default: what `join` does with dead letters when ``fail_fast`` is not given
        (as on Dramatiq's `StubBroker`; False here, since a real queue keeps old dead letters).

    Acked rows are deleted at once rather than kept as ``done``: dramatiq never reads them back
    (results live in a result backend), and a table that holds only live work keeps the claim
    index small. Rejected rows (dead letters) stay until ``purge_dead_letters``, which the
    scheduler runs (``skillq.actors.maintenance``).

    Delayed messages are stored in their own queue with an ``eta`` and only become claimable when
    due, so no ``.DQ`` delay queues are declared and a crash cannot strand a delayed message in
    some worker's memory.
    """

    def __init__(
        self,
        *,
        url: str | None = None,
        path: str | os.PathLike[str] | None = None,
        lease_secs: float = 30.0,
        middleware: list[Middleware] | None = None,
        fail_fast_default: bool = False,
    ) -> None:
        if (url is None) == (path is None):
            raise TypeError("SQLiteBroker takes one of url= or path=")
        super().__init__(middleware=middleware)
        self.path = database_path(url if url is not None else path)  # type: ignore[arg-type]
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self.lease_secs = lease_secs
        self.fail_fast_default = fail_fast_default
        self._db = SQLiteConnection(self.path)
        with self._db.writing() as conn:
            conn.executescript(SCHEMA)
            adopt_dramatiq_sqlite_rows(conn)
        #: Per queue, what idle consumers sleep on (`skillq.brokers.sqlite_queue_wakes`).
        self.wakes = QueueWakes()
        self.failures = RecentFailures()  # the consumer's nack fills it, `join` reads it
        self.stopping = False  # a worker of this process is shutting down (see `emit_before`)
        self._owner_pid = -1
        self._owner = ""
        self._closed = threading.Event()
        # Consumer threads call `consume` together: without it each could start its own watcher.
        self._starting = threading.Lock()
        self._renewer: threading.Thread | None = None
        self._watcher: CommitWatcher | None = None

    @property
    def lease_owner(self) -> str:
        """Per process, so leases of a dead worker process are told apart from live ones."""
        if self._owner_pid != os.getpid():
            self._owner_pid = os.getpid()
            self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        return self._owner

    def emit_before(self, signal: str, *args: object, **kwargs: object) -> None:
        """Idle consumers block for dramatiq's whole ``worker_timeout``: when a worker starts to
        shut down, wake them and have them return often, so that it need not wait that long."""
        if signal == "worker_boot":
            self.stopping = False
        elif signal == "worker_shutdown":
            self.stopping = True
            self.notify()
        super().emit_before(signal, *args, **kwargs)

    def declare_queue(self, queue_name: str) -> None:
        if queue_name not in self.queues:
            self.emit_before("declare_queue", queue_name)
            self.queues[queue_name] = True
            self.emit_after("declare_queue", queue_name)

    def enqueue(self, message: Message, *, delay: int | None = None) -> Message:
        message = self._queued(message)
        self.emit_before("enqueue", message, delay)
        now = current_millis()
        row = (
            message.message_id,
            message.queue_name,
            message_priority(message),
            now + max(delay or 0, 0),
        )
        with self._db.writing() as conn:
            conn.execute(INSERT_MESSAGE, (*row, message.encode(), now))
        self.notify()
        self.emit_after("enqueue", message, delay)
        return message

    def enqueue_many(self, items: list[tuple[Message, int | None]]) -> None:
        """A batch submit's messages in one transaction (one commit, not one each): all
        are sent or none (`brokers.batch_sends`)."""
        sent = [(self._queued(message), delay) for message, delay in items]
        for message, delay in sent:
            self.emit_before("enqueue", message, delay)
        now = current_millis()
        rows = [
            (m.message_id, m.queue_name, message_priority(m), now + max(d or 0, 0), m.encode(), now)
            for m, d in sent
        ]
        try:
            with self._db.writing() as conn:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany(INSERT_MESSAGE, rows)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.rollback()
                    raise
        except Exception as error:
            raise NotAllSent(list(range(len(items))), error) from error
        self.notify()
        for message, delay in sent:
            self.emit_after("enqueue", message, delay)

    def _queued(self, message: Message) -> Message:
        queue_name = q_name(message.queue_name)
        return message if queue_name == message.queue_name else message.copy(queue_name=queue_name)

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 30000) -> SQLiteConsumer:
        with self._starting:
            self._start_renewer()
            self._start_watcher()
        db = SQLiteConnection(self.path)
        return SQLiteConsumer(self, q_name(queue_name), db, prefetch=prefetch, timeout=timeout)

    def flush(self, queue_name: str) -> None:
        with self._db.writing() as conn:
            conn.execute("DELETE FROM skillq_messages WHERE queue_name = ?", (q_name(queue_name),))

    def flush_all(self) -> None:
        with self._db.writing() as conn:
            conn.execute("DELETE FROM skillq_messages")
        self.failures.clear()

    def join(
        self, queue_name: str, *, timeout: int | None = None, fail_fast: bool | None = None
    ) -> None:
        """Wait until the queue has no queued or leased rows (``timeout`` in ms, like dramatiq).

        With ``fail_fast`` (default: ``fail_fast_default``), then raise the exception of the
        queue's oldest dead letter, as Dramatiq's `StubBroker` does: the real one if this
        process dead-lettered it, else a plain `Exception` naming the message.
        """
        queue_name = q_name(queue_name)
        deadline = None if timeout is None else time.monotonic() + timeout / 1000
        while True:
            with self._db() as conn:
                (active,) = conn.execute(
                    "SELECT COUNT(*) FROM skillq_messages"
                    " WHERE queue_name = ? AND state IN ('queued', 'leased')",
                    (queue_name,),
                ).fetchone()
                dead = conn.execute(
                    "SELECT seq, message_id FROM skillq_messages"
                    " WHERE queue_name = ? AND state = 'rejected' ORDER BY seq LIMIT 1",
                    (queue_name,),
                ).fetchone()
            if not active:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise QueueJoinTimeout(queue_name)
            time.sleep(JOIN_POLL_SECS)
        if dead and (self.fail_fast_default if fail_fast is None else fail_fast):
            seq, message_id = dead
            raise self.failures.get(seq) or Exception(f"Message {message_id} was dead-lettered")

    @property
    def dead_letters(self) -> list[Message]:
        """Rejected messages of every queue, oldest first, as the worker last saw them."""
        with self._db() as conn:
            rows = conn.execute(
                "SELECT message FROM skillq_messages WHERE state = 'rejected' ORDER BY seq"
            ).fetchall()
        return [Message.decode(bytes(row[0])) for row in rows]

    def purge_dead_letters(self, older_than_secs: float) -> int:
        """Delete rejected rows older than this; returns how many. Acked rows need no purge."""
        cutoff = current_millis() - int(older_than_secs * 1000)
        with self._db.writing() as conn:
            cursor = conn.execute(
                "DELETE FROM skillq_messages WHERE state = 'rejected' AND mtime < ?", (cutoff,)
            )
            return cursor.rowcount

    def close(self) -> None:
        self._closed.set()
        if self._renewer is not None and self._renewer is not threading.current_thread():
            self._renewer.join(timeout=5)
        if self._watcher is not None:
            self._watcher.stop()
        self._db.close()

    def notify(self) -> None:
        """Wake all of this process's idle consumers at once; other processes see the commit
        (`skillq.brokers.sqlite_wake`)."""
        self.wakes.bump_all()

    def wait_for_enqueue(self, queue_name: str, seen_generation: int, timeout: float) -> None:
        self.wakes.wait(queue_name, seen_generation, timeout)

    def _on_commit(self) -> bool:
        """Another connection committed: wake the consumers of the queues it added rows to.
        False if it added none (the watcher then looks again shortly: see `CommitWatcher`)."""
        try:
            with self._db() as conn:
                return self.wakes.bump_new(conn)
        except (sqlite3.Error, ConnectionFailed):
            logger.debug("Could not read the new rows; waking every consumer.", exc_info=True)
            self.notify()
            return True

    def _start_watcher(self) -> None:
        """One thread per process wakes its idle consumers when another connection commits
        (another process enqueued, or a consumer of ours acked or claimed); see
        `skillq.brokers.sqlite_wake` for how it learns of commits and
        `skillq.brokers.sqlite_queue_wakes` for whom it wakes."""
        if self._watcher is not None and self._watcher.is_alive():
            return
        with self._db() as conn:
            self.wakes.start_from(conn)
        self._watcher = CommitWatcher(SQLiteConnection(self.path), self._on_commit)
        self._watcher.start()

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
                with self._db.writing() as conn:
                    conn.execute(
                        "UPDATE skillq_messages SET lease_expires = ?"
                        " WHERE lease_owner = ? AND state = 'leased'",
                        (current_millis() + int(self.lease_secs * 1000), self.lease_owner),
                    )
            except (sqlite3.Error, ConnectionFailed):
                self.logger.warning("Could not renew leases; retrying.", exc_info=True)
