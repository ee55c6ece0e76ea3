"""Keeps SQLite's write-ahead logs small without making a request pay for a checkpoint.

The bound: each WAL file of ours (the store's and the SQLite broker's) stays under
`WAL_LIMIT_BYTES` (64 MiB) under continuous writes from any number of threads and processes,
and is truncated to zero bytes when a process that wrote it exits cleanly. The one thing
that can defeat it is a single read transaction held open for longer than
`TRUNCATE_WAIT_SECS`: no checkpoint may overwrite pages a reader still needs.

How. By default the connection whose commit pushes the WAL past 1,000 pages runs the
checkpoint itself, so one write in a few hundred pays several milliseconds (bench/http_api.py
showed submit p99 ~4-5 ms against a ~0.2 ms median). Our connections turn that off
(`wal_autocheckpoint=0`), and one daemon thread per process and file checkpoints instead:

- every `PASSIVE_EVERY_SECS` a PASSIVE checkpoint, which never blocks anyone, copies what it
  can back into the database (so the next TRUNCATE has little left to copy);
- every `CHECK_EVERY_SECS` it looks at the file's size, and past `TRUNCATE_ABOVE_BYTES` runs
  a TRUNCATE checkpoint. A PASSIVE one alone never lets the WAL shrink under steady writes:
  the file only restarts when a checkpoint has copied every frame and no reader is in it,
  and new commits keep landing while it copies (measured: 1.3 GB in 20 s, bench/sqlite_wal.py).
  TRUNCATE holds writers off while it copies the rest, waits (at most `TRUNCATE_WAIT_SECS`)
  for readers of older snapshots to finish, and cuts the file to zero bytes. Writers wait in
  their busy handler meanwhile; a PASSIVE checkpoint just before keeps that part short.

At exit the same TRUNCATE runs once more, so a clean shutdown leaves an empty WAL.
The store and the SQLite broker both use this module, through `start_checkpointer`.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from multiprocessing import util as multiprocessing_util

logger = logging.getLogger(__name__)

#: The stated bound on a WAL file's size, in bytes (tests/test_sqlite_wal.py holds us to it).
WAL_LIMIT_BYTES = 64 * 2**20
#: Size, in bytes, past which the checkpointer truncates the WAL: a quarter of the bound,
#: leaving room for what ~1,400 submits/s add (about 65 MB/s) between two looks.
TRUNCATE_ABOVE_BYTES = 16 * 2**20
#: Seconds between two looks at a WAL's size.
CHECK_EVERY_SECS = 0.05
#: Seconds between two PASSIVE checkpoints.
PASSIVE_EVERY_SECS = 0.25
#: Seconds a TRUNCATE checkpoint may wait for the write lock and for older readers.
TRUNCATE_WAIT_SECS = 1.0
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
        self._conn = sqlite3.connect(
            path, timeout=TRUNCATE_WAIT_SECS, isolation_level=None, check_same_thread=False
        )
        # As our writers do: sync at checkpoints only, not after the truncation as well.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn_lock = threading.Lock()

    def run(self) -> None:
        next_passive = time.monotonic() + PASSIVE_EVERY_SECS
        while not self._stopped.wait(CHECK_EVERY_SECS):
            try:
                if self._wal_size() > TRUNCATE_ABOVE_BYTES:
                    # Copy what can be copied while writers carry on, so that the part
                    # they wait for is only what they added since.
                    self._checkpoint("PASSIVE")
                    self._checkpoint("TRUNCATE")
                    next_passive = time.monotonic() + PASSIVE_EVERY_SECS
                elif time.monotonic() >= next_passive:
                    self._checkpoint("PASSIVE")
                    next_passive = time.monotonic() + PASSIVE_EVERY_SECS
            except sqlite3.Error as error:
                # Another process checkpointing, or a reader in the way; the next look retries.
                logger.debug("WAL checkpoint of %s skipped: %s", self.path, error)

    def truncate_at_exit(self) -> None:
        self._stopped.set()
        try:
            self._checkpoint("TRUNCATE")
        except sqlite3.Error as error:
            logger.debug("WAL of %s not truncated at exit: %s", self.path, error)

    def _checkpoint(self, mode: str) -> None:
        with self._conn_lock:
            self._conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()

    def _wal_size(self) -> int:
        try:
            return os.stat(self.wal_path).st_size
        except FileNotFoundError:
            return 0
