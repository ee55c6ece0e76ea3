"""One writer at a time on a SQLite file, handed over at once between threads and processes.

SQLite lets one connection write at a time. A writer that finds the lock taken goes into
SQLite's busy handler, which sleeps 1, 2, 5, 10, ... ms between tries (Python's `sqlite3`
offers no other handler), however short the other's write was. The API, the workers and the
scheduler are separate processes writing the same store, and the SQLite broker's consumers
each have a connection of their own: measured end to end on the embedded default, a submit's
INSERT in the store took 778 us on average against a median of 73 (a tenth past 1 ms, 1 %
past 18 ms), its enqueue 199 against 46.

`WriteLock` makes our writers take turns before they ask SQLite: the threads of a process on a
reentrant lock, which hands over at once, then the process on an exclusive `flock` of a file
beside the database, tried again after 25 us, 50, 100, ... up to 1 ms while another process
holds it. Under it SQLite's own lock is free when a writer asks, so its busy handler does not
run. One `WriteLock` per file and process (`shared_write_lock`): a `flock` belongs to the open
file, which the process's threads share. Only our writers take it; any other writer (an older
version, the sqlite3 shell) still meets ours on SQLite's lock and busy timeout, as before.
Nothing waits for it while holding SQLite's write lock, so it adds no way to deadlock; a
writer killed while holding it loses it with its file descriptor, and one that hangs costs
the others `WriteLockTimeout` after their timeout, as SQLite's busy timeout would.

Where the lock file cannot be opened (a read-only directory), the process keeps the threads'
lock only and SQLite's busy handler does the rest, as before.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
import weakref
from types import TracebackType

import peewee

logger = logging.getLogger(__name__)

#: Appended to the database's path for the lock's file, as SQLite names its `-wal` and `-shm`.
LOCK_FILE_SUFFIX = "-writer"
#: Pauses between two tries at another process's `flock` (seconds): the first short, as most
#: writes take ~0.1 ms, then doubling up to the longest.
FIRST_PAUSE_SECS = 0.000_025
LONGEST_PAUSE_SECS = 0.001


class WriteLockTimeout(peewee.OperationalError):
    """No turn to write within the timeout: what SQLite's busy timeout would have raised."""


class WriteLock:
    """Held around a write transaction (or a write statement outside one); reentrant.

    Usable as a context manager, or with `acquire`/`release`."""

    def __init__(self, database_path: str, timeout: float) -> None:
        self.path = database_path + LOCK_FILE_SUFFIX
        self.timeout = timeout
        self._threads = threading.RLock()
        self._depth = 0
        self._pid = os.getpid()
        self._fd: int | None = None
        # An in-memory database has no file and no other process to meet.
        self._unusable = database_path in ("", ":memory:")

    def acquire(self) -> None:
        """Wait for this process's and then the file's turn, `timeout` seconds at most."""
        deadline = time.monotonic() + self.timeout
        if not self._threads.acquire(timeout=self.timeout):
            raise WriteLockTimeout(f"database is locked (no turn to write in {self.timeout} s)")
        if self._depth == 0:
            try:
                fd = self._file()
                if fd is not None:
                    _lock_file(fd, deadline, self.timeout)
            except BaseException:
                self._threads.release()
                raise
        self._depth += 1

    def release(self) -> None:
        self._depth -= 1
        try:
            if self._depth == 0 and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def __enter__(self) -> WriteLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def __del__(self) -> None:
        # Only this process's own descriptor: an inherited one's number may be reused here.
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)

    def _file(self) -> int | None:
        """This process's descriptor of the lock file, opened on first use.

        A forked child opens its own: the inherited descriptor shares the parent's open file,
        and with it the parent's `flock`, so the two would not exclude each other."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            if self._fd is not None:
                os.close(self._fd)  # the parent's open file (and lock) live on in the parent
                self._fd = None
        if self._fd is None and not self._unusable:
            self._fd = _open(self.path)
            self._unusable = self._fd is None
        return self._fd


#: Held weakly: a store or broker closed and dropped (tests open hundreds) gives its lock,
#: and the lock file's descriptor, back.
_shared: weakref.WeakValueDictionary[str, WriteLock] = weakref.WeakValueDictionary()
_shared_lock = threading.Lock()


def shared_write_lock(database_path: str, timeout: float) -> WriteLock:
    """The one `WriteLock` of this process for the file at `database_path`, so that all of
    the process's connections to it (the store's pool; the SQLite broker's one per consumer)
    take turns on its threads' lock, handed over at once, rather than each on its own
    descriptor's `flock`, which another descriptor of the same process would only poll for.
    The first caller's `timeout` holds for all."""
    key = os.path.abspath(database_path) if database_path not in ("", ":memory:") else ""
    with _shared_lock:
        lock = _shared.get(key) if key else None
        if lock is None:
            lock = WriteLock(database_path, timeout)
            if key:
                _shared[key] = lock
        return lock


def _lock_file(fd: int, deadline: float, timeout: float) -> None:
    """`flock` in short polls rather than one blocking call, which nothing could bound: a
    holder that hangs (a stopped process) must cost a writer an error, as SQLite's busy
    timeout does, not a hang."""
    pause = FIRST_PAUSE_SECS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                message = f"database is locked (no turn to write in {timeout} s)"
                raise WriteLockTimeout(message) from None
        time.sleep(pause)
        pause = min(pause * 2, LONGEST_PAUSE_SECS)


def _open(path: str) -> int | None:
    # `flock` needs no write access, so a lock file another user created (mode 0644) works.
    for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY):
        try:
            return os.open(path, flags | os.O_CLOEXEC, 0o644)
        except OSError as error:
            failure = error
    logger.warning(
        "SQLite writers of this process wait on SQLite's busy handler: %s cannot be opened (%s)",
        path,
        failure,
    )
    return None
