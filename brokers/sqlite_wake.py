"""How a process of the SQLite broker learns that another connection committed: at once, and
at no cost while nothing happens.

Why. Idle consumers sleep on their queue's generation (`SQLiteBroker.wait_for_enqueue`), and
something has to move it when another process enqueues. Polling ``PRAGMA data_version`` every
5 ms did, for ~2.8 % of a core per idle process, most of what an idle worker cost
(bench/sqlite_idle.py). On Linux the kernel can tell us instead: in WAL mode every commit
writes the database's ``-wal`` file, so an inotify ``IN_MODIFY`` event for that name wakes the
broker's watcher, which confirms with ``data_version`` (a checkpoint writes the WAL too
without changing any data) and has the broker move the generations of the queues the
commit added rows to (`skillq.brokers.sqlite_queue_wakes`).

- The folder is watched, not the file: SQLite deletes the WAL when the last connection closes
  and creates it again with the next, and a watch on the file would die with it. Events for
  the folder's other files (the store often lives next to the broker) are told apart by name.
- One inotify instance and one reading thread per process serve every broker of the process
  (`_Events`): the kernel allows a user only 128 instances, and tests open hundreds of brokers.
- The kernel reports the WAL write a moment before the writer publishes the commit in the
  shared-memory index, so a look that finds nothing new looks again shortly after
  (`RECHECK_AFTER_SECS`); a safety poll every `SAFETY_POLL_SECS` covers anything else inotify
  can miss (an event queue overflow, the folder replaced under us). "Nothing new" is what
  `on_commit` says, not only an unmoved ``data_version``: after an idle spell (the WAL emptied
  by the checkpointer, then restarted by the next writer) the first look often finds the
  version moved and the new row not there yet. Taking that for the commit left the row to
  the commit's later events, read after `MIN_WAKE_GAP_SECS`: idle enqueue to start was
  6.3 ms for raw Dramatiq on this broker, 1.6 ms with the looks again.
- Where inotify is missing (not Linux, no instance left) the watcher polls ``data_version``
  every `FALLBACK_POLL_SECS`, as it always did.
- Commits arriving back to back (a busy worker's acks, the store's writes) wake the reading
  thread at most every `MIN_WAKE_GAP_SECS`, the events of the gap read in one go: each
  look that finds a commit costs a query for the new rows and wakes the consumers of their
  queues for a claim, so under load they must not come more often than the 5 ms poll did.
  Only a read that woke a watcher begins such a gap: the store's WAL often sits next door,
  and a submit commits to it just before the broker, whose event then waited out a gap
  begun by the store's (idle enqueue to start was 8.3 ms, 4.5 ms without that wait).

The binding is ours, a few lines of ctypes over libc's inotify calls: inotify_simple would add
a dependency for the same lines, and watchfiles runs a Rust thread that batches changes for at
least 50 ms, too slow for a wake-up.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import sqlite3
import struct
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from dramatiq.errors import ConnectionFailed

if TYPE_CHECKING:
    from skillq.brokers.sqlite_database import SQLiteConnection

logger = logging.getLogger(__name__)

#: Seconds between two looks at ``data_version`` when inotify is not available.
FALLBACK_POLL_SECS = 0.005
#: Seconds between two looks at ``data_version`` even when no event came (lost events).
SAFETY_POLL_SECS = 0.5
#: After an event whose look found nothing new, look again after these many seconds.
RECHECK_AFTER_SECS = (0.0002, 0.001, 0.003, 0.02)
#: Fewest seconds between two wake-ups of the reading thread.
MIN_WAKE_GAP_SECS = 0.005

_IN_MODIFY = 0x00000002
_IN_Q_OVERFLOW = 0x00004000
_IN_IGNORED = 0x00008000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name


class _Events:
    """This process's inotify instance and the thread that pokes watchers on their events."""

    def __init__(self, wake_gap_secs: float = MIN_WAKE_GAP_SECS) -> None:
        self.wake_gap_secs = wake_gap_secs
        self._libc = ctypes.CDLL(None, use_errno=True)
        init = getattr(self._libc, "inotify_init1", None)
        if init is None:
            raise OSError("inotify is not available on this system")
        self.fd = init(os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._watchers: dict[int, dict[str, set[CommitWatcher]]] = {}  # wd -> name -> watchers
        thread = threading.Thread(target=self._run, name="skillq-sqlite-inotify", daemon=True)
        thread.start()

    def subscribe(self, folder: str, name: str, watcher: CommitWatcher) -> bool:
        with self._lock:
            wd = self._libc.inotify_add_watch(self.fd, os.fsencode(folder), _IN_MODIFY)
            if wd < 0:
                logger.info("No inotify watch on %s (errno %d).", folder, ctypes.get_errno())
                return False
            self._watchers.setdefault(wd, {}).setdefault(name, set()).add(watcher)
            return True

    def unsubscribe(self, watcher: CommitWatcher) -> None:
        with self._lock:
            for names in self._watchers.values():
                for watchers in names.values():
                    watchers.discard(watcher)

    def _run(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                logger.warning("inotify stopped; SQLite commits are polled for.", exc_info=True)
                self._drop_all()
                return
            poke: set[CommitWatcher] = set()
            with self._lock:
                offset = 0
                while offset < len(data):
                    wd, mask, _, size = _EVENT.unpack_from(data, offset)
                    start = offset + _EVENT.size
                    offset = start + size
                    names = self._watchers.get(wd, {})
                    if mask & (_IN_Q_OVERFLOW | _IN_IGNORED):  # lost, or the folder went away
                        poke.update(
                            w for ws in self._watchers.values() for v in ws.values() for w in v
                        )
                    elif size:
                        poke.update(names.get(os.fsdecode(data[start:offset].rstrip(b"\0")), ()))
                    if mask & _IN_IGNORED:
                        for watchers in self._watchers.pop(wd, {}).values():
                            for watcher in watchers:
                                watcher.subscribed = False
            for watcher in poke:
                watcher.poke()
            if poke:
                # Let back-to-back commits pile up in the kernel's queue and read them together.
                select.select([], [], [], self.wake_gap_secs)

    def _drop_all(self) -> None:
        with self._lock:
            dropped = {w for names in self._watchers.values() for ws in names.values() for w in ws}
            self._watchers.clear()
        for watcher in dropped:
            watcher.subscribed = False
            watcher.poke()


_events: _Events | None = None
_events_lock = threading.Lock()
_events_failed_pid = -1


def _process_events() -> _Events | None:
    """This process's inotify instance, made at first use (again after a fork: the parent's
    instance would hand half of our events to the parent); None where there is none."""
    global _events, _events_failed_pid
    with _events_lock:
        pid = os.getpid()
        if _events is not None and _events.pid == pid:
            return _events
        if _events is not None:
            os.close(_events.fd)  # the parent's, inherited through the fork
            _events = None
        if _events_failed_pid == pid:
            return None
        try:
            _events = _Events()
        except (OSError, AttributeError) as error:
            logger.info("No inotify (%s); SQLite commits are polled for.", error)
            _events, _events_failed_pid = None, pid
        return _events


class CommitWatcher:
    """One thread per broker and process that calls `on_commit` when another connection has
    committed to the broker's database.

    It reads ``data_version`` on a connection of its own, which never writes, so every commit
    by any other connection (other processes, this process's consumers) moves it. `on_commit`
    says whether the commit was what it looks for; when not, the watcher looks again
    `RECHECK_AFTER_SECS` later, as after an event that moved nothing.
    """

    def __init__(self, db: SQLiteConnection, on_commit: Callable[[], bool]) -> None:
        self.db = db
        self.on_commit = on_commit
        self.subscribed = False  # False: inotify is not watching for us, so we poll
        self._poked = threading.Event()
        self._stopped = threading.Event()
        self._seen: int | None = None
        self._check_lock = threading.Lock()  # the inotify thread and ours both look
        self._done = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.name = "skillq-sqlite-change-watcher"

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def poke(self) -> None:
        """The database's WAL was written: look at once, from the inotify thread (one thread
        hand-off fewer on the way to a consumer); if nothing shows yet, our thread looks again."""
        if not self._check():
            self._poked.set()

    def stop(self) -> None:
        self._stopped.set()
        self._poked.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        events = _process_events()
        if events is not None:
            path = os.path.abspath(self.db.path)
            name = os.path.basename(path) + "-wal"
            self.subscribed = events.subscribe(os.path.dirname(path), name, self)
        try:
            self._check()  # commits made before the watch began
            while not self._stopped.is_set():
                poked = self._poked.wait(
                    SAFETY_POLL_SECS if self.subscribed else FALLBACK_POLL_SECS
                )
                self._poked.clear()
                if self._stopped.is_set():
                    break
                if not poked or not self.subscribed:
                    self._check()
                    continue
                # The event can come before the commit shows in the WAL index: look again.
                for delay in RECHECK_AFTER_SECS:
                    if self._stopped.wait(delay) or self._poked.is_set() or self._check():
                        break
        finally:
            self._stopped.set()
            if events is not None:
                events.unsubscribe(self)
            with self._check_lock:  # a poke already on its way must not reopen it
                self._done = True
                self.db.close()

    def _check(self) -> bool:
        """Call `on_commit` if ``data_version`` moved since the last look; True if it did and
        `on_commit` found what it looks for."""
        with self._check_lock:
            if self._done:
                return False
            try:
                with self.db() as conn:
                    (version,) = conn.execute("PRAGMA data_version").fetchone()
            except (sqlite3.Error, ConnectionFailed):
                logger.debug("Could not look for commits; retrying.", exc_info=True)
                return False
            if version == self._seen:
                return False
            self._seen = version
        return self.on_commit()
