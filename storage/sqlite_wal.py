"""Keeps SQLite's write-ahead logs small without making a request pay for a checkpoint.

The bound: each WAL file of ours (the store's and the SQLite broker's) stays under
`WAL_LIMIT_BYTES` (64 MiB) under continuous writes from any number of threads and processes,
and is truncated to zero bytes when a process that wrote it exits cleanly. Two things can
defeat it, both outside what skillq does: a read transaction held open for long (no
checkpoint may overwrite pages a reader still needs), and writers that hold the write lock
back to back without a moment's pause (SQLite's locks are not fair; ours do a request's or
a job's work between two writes).

How. By default the connection whose commit pushes the WAL past 1,000 pages runs the
checkpoint itself, so one write in a few hundred pays several milliseconds (bench/http_api.py
showed submit p99 ~4-5 ms against a ~0.2 ms median). Our connections turn that off
(`wal_autocheckpoint=0`), and one daemon thread per process and file checkpoints instead:

- every `PASSIVE_EVERY_SECS`, if the WAL changed, a PASSIVE checkpoint (never blocks anyone)
  copies what it can back into the database, so the next TRUNCATE has little left to copy;
- every `CHECK_EVERY_SECS` it looks at the file's size, and past `TRUNCATE_ABOVE_BYTES` runs
  a TRUNCATE checkpoint. A PASSIVE one alone never lets the WAL shrink under steady writes:
  the file only restarts when a checkpoint has copied every frame and no reader is in it,
  and new commits keep landing while it copies (measured: 1.3 GB in 20 s, bench/sqlite_wal.py).
  A TRUNCATE that gets the write lock holds writers off while it copies the rest and cuts
  the file to zero bytes. It runs without a busy handler and is retried every millisecond
  (for up to `TRUNCATE_WAIT_SECS`): an attempt that finds a writer, a reader of an older
  snapshot or another process's checkpoint in its way copies what it can and lets go at
  once, so writers never wait on a reader through us.

At exit one more TRUNCATE runs, so a clean shutdown leaves an empty WAL. The store and the
SQLite broker both use this module, through `start_checkpointer`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from multiprocessing import util as multiprocessing_util

from skillq.storage.sqlite_write_lock import WriteLock, WriteLockTimeout

logger = logging.getLogger(__name__)

#: The stated bound on a WAL file's size, in bytes (tests/test_sqlite_wal.py holds us to it).
WAL_LIMIT_BYTES = 64 * 2**20
#: Size, in bytes, past which the checkpointer truncates the WAL: a quarter of the bound,
#: leaving room for what ~1,400 submits/s add (about 65 MB/s) between two looks.
TRUNCATE_ABOVE_BYTES = 16 * 2**20
#: Seconds between two looks at a WAL's size, and between two looks at one that did not
#: change since the last (at ~65 MB/s, 0.25 s adds 16 MiB: still within the bound).
CHECK_EVERY_SECS = 0.05
IDLE_CHECK_EVERY_SECS = 0.25
#: Seconds between two PASSIVE checkpoints.
PASSIVE_EVERY_SECS = 0.25
#: Seconds a TRUNCATE checkpoint is retried for before the next look tries again.
TRUNCATE_WAIT_SECS = 1.0
#: Seconds a TRUNCATE attempt waits for our writers' turn (`WriteLock`) before it counts as
#: busy: writers hold it for one statement or transaction, ~0.1 ms.
WRITERS_WAIT_SECS = 0.05
#: Pragma that stops committing connections from checkpointing by themselves.
NO_AUTOCHECKPOINT = "PRAGMA wal_autocheckpoint=0"

_running: set[tuple[int, str]] = set()
_lock = threading.Lock()


def start_checkpointer(path: str | os.PathLike[str]) -> None:
    """Ensure this process keeps the WAL of `path` bounded, from a background thread, and
    truncates it when the process exits (idempotent, fork-aware)."""
    key = (os.getpid(), os.path.abspath(path))
    with _lock:
        if key in _running:
            return
        _running.add(key)
    checkpointer = _Checkpointer(key[1])
    # Exit hook: multiprocessing runs these both at interpreter exit (it registers itself with
    # atexit) and when a multiprocessing child ends, which leaves through os._exit and skips
    # atexit; dramatiq's worker processes are such children.
    multiprocessing_util.Finalize(None, checkpointer.truncate_at_exit, exitpriority=0)
    thread = threading.Thread(target=checkpointer.run, name="sqlite-wal-checkpoint", daemon=True)
    thread.start()


class _Checkpointer:
    def __init__(self, path: str) -> None:
        self.path = path
        self.wal_path = path + "-wal"
        self._stopped = threading.Event()
        # No busy handler: its sleeps grow to 100 ms, and busy writers take the lock back
        # between two of them; `_truncate` retries every millisecond instead.
        self._conn = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
        # As our writers do: sync at checkpoints only, not after the truncation as well.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn_lock = threading.Lock()
        # Its own descriptor: a `flock` on it excludes this process's writers too.
        self._writers = WriteLock(path, timeout=WRITERS_WAIT_SECS)

    def run(self) -> None:
        seen = copied = (0, 0)  # the WAL's (size, mtime) at the last look / last PASSIVE
        next_passive = time.monotonic() + PASSIVE_EVERY_SECS
        wait = CHECK_EVERY_SECS
        while not self._stopped.wait(wait):
            state = self._wal_state()
            # An idle file (tests open hundreds) is looked at less often, never so rarely
            # that a burst could fill the room between TRUNCATE_ABOVE_BYTES and the bound.
            wait = CHECK_EVERY_SECS if state != seen else IDLE_CHECK_EVERY_SECS
            seen = state
            try:
                if state[0] > TRUNCATE_ABOVE_BYTES:
                    self._truncate()
                    next_passive = time.monotonic() + PASSIVE_EVERY_SECS
                elif state != copied and time.monotonic() >= next_passive:
                    self._checkpoint("PASSIVE")
                    copied = state
                    next_passive = time.monotonic() + PASSIVE_EVERY_SECS
            except sqlite3.Error as error:
                # Another process checkpointing, or a reader in the way; the next look retries.
                logger.debug("WAL checkpoint of %s skipped: %s", self.path, error)

    def truncate_at_exit(self) -> None:
        self._stopped.set()
        if not os.path.exists(self.path):
            # Removed with its directory (a temporary one) before the process ended: no WAL
            # to truncate, and no lock file to take for it.
            return
        try:
            self._truncate()
        except sqlite3.Error as error:
            logger.debug("WAL of %s not truncated at exit: %s", self.path, error)

    def _truncate(self) -> None:
        """TRUNCATE, retried until it completes or TRUNCATE_WAIT_SECS have passed.

        An attempt that finds a writer, a reader of an older snapshot or another process's
        checkpoint in the way copies what it can (as PASSIVE would) and gives the lock back
        at once, so writers never wait on a reader through us."""
        deadline = time.monotonic() + TRUNCATE_WAIT_SECS
        while self._checkpoint("TRUNCATE") and time.monotonic() < deadline:
            time.sleep(0.001)

    def _checkpoint(self, mode: str) -> bool:
        """Run one checkpoint; True if it could not finish (SQLite's "busy").

        A TRUNCATE holds our writers' `WriteLock` while it runs: it holds SQLite's write lock
        for its copy (~10 ms at 16 MiB), and writers that met it there slept in SQLite's busy
        handler, 1, 2, 5, 10 ms at a time, well past its end; waiting for the lock, they start
        within a millisecond of it."""
        writers = self._writers if mode == "TRUNCATE" else contextlib.nullcontext()
        with self._conn_lock:
            try:
                with writers:
                    (busy, _, _) = self._conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
            except WriteLockTimeout:
                return True
        return bool(busy)

    def _wal_state(self) -> tuple[int, int]:
        try:
            stat = os.stat(self.wal_path)
        except FileNotFoundError:
            return (0, 0)
        return (stat.st_size, stat.st_mtime_ns)
