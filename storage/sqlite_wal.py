"""Checkpoints SQLite's write-ahead log from a background thread instead of a request.

By default the connection whose commit pushes the WAL past 1000 pages runs the checkpoint
itself, so one write in a few hundred pays several milliseconds (bench/http_api.py showed
submit p99 ~4-5 ms against a ~0.2 ms median, with the same tail in-process). Our
connections turn that off (`wal_autocheckpoint=0`), and one daemon thread per process and
file runs a PASSIVE checkpoint, which never blocks readers or writers, once a second.
The store and the SQLite broker both use it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time

logger = logging.getLogger(__name__)

#: Seconds between two checkpoints of one file.
CHECKPOINT_INTERVAL_SECS = 1.0
#: Pragma that stops committing connections from checkpointing by themselves.
NO_AUTOCHECKPOINT = "PRAGMA wal_autocheckpoint=0"

_running: set[tuple[int, str]] = set()
_lock = threading.Lock()


def start_checkpointer(path: str | os.PathLike[str]) -> None:
    """Ensure this process checkpoints `path` in the background (idempotent, fork-aware)."""
    key = (os.getpid(), os.path.abspath(path))
    with _lock:
        if key in _running:
            return
        _running.add(key)
    thread = threading.Thread(
        target=_checkpoint_forever, args=(key[1],), name="sqlite-wal-checkpoint", daemon=True
    )
    thread.start()


def _checkpoint_forever(path: str) -> None:
    conn = sqlite3.connect(path, timeout=1.0, isolation_level=None, check_same_thread=False)
    while True:
        time.sleep(CHECKPOINT_INTERVAL_SECS)
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as error:
            # Another process checkpointing at the same moment; the next round catches up.
            logger.debug("WAL checkpoint of %s skipped: %s", path, error)
