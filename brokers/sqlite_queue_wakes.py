"""Which idle consumers of the SQLite broker a commit wakes: those of the queues it added to.

Why. The watcher (`skillq.brokers.sqlite_wake`) learns that another connection committed, not
what it wrote. Waking every idle consumer of the process for each such commit made each of
them look at its queue (a probe and a due-time query): a skillq worker consumes six queues,
and on the side-by-side e2e run (one client, a worker keeping up) 7,490 of 8,651 claims in a
run of 3,200 jobs found nothing, about five wasted queries per job.

How. Messages get their ``seq`` from AUTOINCREMENT, and SQLite commits one writer at a time,
so a row committed after a look always has a higher ``seq`` than any seen by it. On each commit
the watcher reports, the process reads the queues of the rows above the highest ``seq`` it has
seen (a range scan of the rowid: only the new rows) and moves the generation of those queues
alone; each queue has its own condition, so the other queues' consumers are not even
scheduled.

A requeue (`SQLiteConsumer.requeue`, a worker stopping) puts rows back under their old
``seq``, so it also adds a row of its own to ``skillq_requeues`` (same AUTOINCREMENT rule), and
the scan reads that table's new rows too. A dead process's lease running out is no commit: the
consumer's own look (at most `sqlite_consumer.RECHECK_SECS` apart) finds it, as it always did.
This process's own enqueues and requeues wake all of its consumers at once (`bump_all`), and
so does a commit whose rows could not be read.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable


class _QueueWake:
    __slots__ = ("changed", "generation")

    def __init__(self) -> None:
        self.generation = 0
        self.changed = threading.Condition()

    def bump(self) -> None:
        with self.changed:
            self.generation += 1
            self.changed.notify_all()


class QueueWakes:
    """Per queue, a generation that moves when a message of the queue may have become
    claimable, and the condition its idle consumers sleep on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, _QueueWake] = {}
        #: The highest `seq` looked at in the message and requeue tables; rows above are new.
        self._seen_seq = 0
        self._seen_requeue = 0
        self._scan_lock = threading.Lock()  # the inotify thread and the watcher's both scan

    def _of(self, queue_name: str) -> _QueueWake:
        wake = self._queues.get(queue_name)
        if wake is None:
            with self._lock:
                wake = self._queues.setdefault(queue_name, _QueueWake())
        return wake

    def generation(self, queue_name: str) -> int:
        return self._of(queue_name).generation

    def wait(self, queue_name: str, seen_generation: int, timeout: float) -> None:
        """Sleep until the queue's generation moves past `seen_generation`, or `timeout`."""
        wake = self._of(queue_name)
        with wake.changed:
            if wake.generation == seen_generation:
                wake.changed.wait(timeout)

    def bump(self, queue_names: Iterable[str]) -> None:
        for queue_name in queue_names:
            self._of(queue_name).bump()

    def bump_all(self) -> None:
        with self._lock:
            wakes = list(self._queues.values())
        for wake in wakes:
            wake.bump()

    def start_from(self, conn: sqlite3.Connection) -> None:
        """Rows there now are the consumers' first claims' to find: look only above them."""
        top, requeue = conn.execute(
            "SELECT (SELECT COALESCE(MAX(seq), 0) FROM skillq_messages),"
            " (SELECT COALESCE(MAX(seq), 0) FROM skillq_requeues)"
        ).fetchone()
        with self._scan_lock:
            self._seen_seq = max(self._seen_seq, top)
            self._seen_requeue = max(self._seen_requeue, requeue)

    def bump_new(self, conn: sqlite3.Connection) -> bool:
        """Move the generation of every queue with a message or a requeue above those seen;
        False if there was none."""
        with self._scan_lock:
            rows = conn.execute(
                "SELECT 0, queue_name, MAX(seq) FROM skillq_messages WHERE seq > ?"
                " GROUP BY queue_name UNION ALL"
                " SELECT 1, queue_name, MAX(seq) FROM skillq_requeues WHERE seq > ?"
                " GROUP BY queue_name",
                (self._seen_seq, self._seen_requeue),
            ).fetchall()
            for table, _, top in rows:
                if table:
                    self._seen_requeue = max(self._seen_requeue, top)
                else:
                    self._seen_seq = max(self._seen_seq, top)
        self.bump({queue_name for _, queue_name, _ in rows})
        return bool(rows)
