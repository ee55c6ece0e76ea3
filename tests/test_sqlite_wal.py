"""SQLite's write-ahead logs stay under the stated bound under continuous writes, and a
clean exit leaves them empty: the store's (peewee pool) and the SQLite broker's alike."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from skillq.storage.sqlite_wal import WAL_LIMIT_BYTES
from tests.support import ROOT

#: Each write carries this much, and each file receives WRITES of them: together more than
#: twice the bound, so a WAL that is never cut would pass it (on main: ~1.3 GB in 20 s).
PAYLOAD_BYTES = 32 * 1024
WRITER_PROCESSES = 2
THREADS_PER_FILE = 2
WRITES_PER_THREAD = 1_200
WRITES = WRITER_PROCESSES * THREADS_PER_FILE * WRITES_PER_THREAD
WORK_SECS = 0.0005

# One writer process: threads writing the store through the store's own pool, and threads
# enqueueing on the SQLite broker (and flushing its queue now and then, as acks would, so the
# database itself stays small while its WAL takes every write). Exits normally when done.
# Each write is followed by WORK_SECS of something else, as a request or a job is: writers
# that hold SQLite's write lock back to back, every moment, would starve any checkpoint.
WRITER = """
import sys, threading, time
from pathlib import Path
from dramatiq.message import Message
from skillq.brokers.sqlite import SQLiteBroker
from skillq.storage.database import open_sqlite

store_path, broker_path, threads, writes, size, work_secs = sys.argv[1:]
threads, writes, size, work_secs = int(threads), int(writes), int(size), float(work_secs)
store = open_sqlite(Path(store_path))
with store.connection_context():
    store.execute_sql("CREATE TABLE IF NOT EXISTS filler (id INTEGER PRIMARY KEY, body BLOB)")
broker = SQLiteBroker(path=broker_path)
broker.declare_queue("wal")

def write_store():
    for i in range(writes):
        with store.connection_context():
            cursor = store.execute_sql("INSERT INTO filler (body) VALUES (?)", (bytes(size),))
            if i % 8 == 7:
                store.execute_sql("DELETE FROM filler WHERE id < ?", (cursor.lastrowid - 4,))
        time.sleep(work_secs)

def write_broker():
    for i in range(writes):
        broker.enqueue(Message("wal", "filler", ("x" * size,), {}, {}))
        if i % 8 == 7:
            broker.flush("wal")
        time.sleep(work_secs)

pool = [threading.Thread(target=f) for f in [write_store, write_broker] * threads]
for thread in pool:
    thread.start()
for thread in pool:
    thread.join()
broker.close()
"""


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def test_wals_stay_under_the_bound_under_continuous_writes_and_are_empty_after_exit(
    tmp_path: Path,
) -> None:
    store_path, broker_path = tmp_path / "jobs.db", tmp_path / "broker.db"
    wals = [Path(f"{store_path}-wal"), Path(f"{broker_path}-wal")]
    args = [str(store_path), str(broker_path), str(THREADS_PER_FILE), str(WRITES_PER_THREAD)]
    command = [sys.executable, "-c", WRITER, *args, str(PAYLOAD_BYTES), str(WORK_SECS)]
    writers = [
        subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        for _ in range(WRITER_PROCESSES)
    ]
    done = threading.Event()
    peak = [0, 0]
    snapshots = [0]

    def sample() -> None:
        while not done.is_set():
            for i, wal in enumerate(wals):
                peak[i] = max(peak[i], _size(wal))
            time.sleep(0.005)

    def read() -> None:
        """Readers hold snapshots, as API requests do: what keeps a WAL from restarting."""
        while not done.is_set():
            for path in (store_path, broker_path):
                if not _size(Path(f"{path}-wal")):
                    continue
                conn = sqlite3.connect(path, timeout=10, isolation_level=None)
                try:
                    conn.execute("BEGIN")
                    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
                    time.sleep(0.002)
                    conn.execute("COMMIT")
                    snapshots[0] += 1
                except sqlite3.OperationalError:
                    pass  # the writers have not created the file's schema yet
                finally:
                    conn.close()

    helpers = [threading.Thread(target=sample), threading.Thread(target=read)]
    for thread in helpers:
        thread.start()
    try:
        for writer in writers:
            _, errors = writer.communicate(timeout=600)
            assert writer.returncode == 0, errors
    finally:
        done.set()
        for thread in helpers:
            thread.join()
        for writer in writers:
            if writer.poll() is None:
                writer.kill()

    assert WRITES * PAYLOAD_BYTES > 2 * WAL_LIMIT_BYTES
    assert snapshots[0] > 0
    assert peak[0] > 0 and peak[1] > 0  # the sampler saw both files in use
    assert peak[0] <= WAL_LIMIT_BYTES, f"store WAL reached {peak[0] / 2**20:.1f} MiB"
    assert peak[1] <= WAL_LIMIT_BYTES, f"broker WAL reached {peak[1] / 2**20:.1f} MiB"
    # Both writers exited normally: the last one out cut the WALs to nothing.
    assert [_size(wal) for wal in wals] == [0, 0]
    store = sqlite3.connect(store_path)
    try:
        assert store.execute("SELECT count(*) FROM filler").fetchone()[0] > 0
    finally:
        store.close()


def test_store_connections_leave_checkpoints_to_the_background_thread(tmp_path: Path) -> None:
    from skillq.storage.database import open_sqlite

    store = open_sqlite(tmp_path / "jobs.db")
    for _ in range(3):  # a fresh connection, then checkouts of the same one from the pool
        with store.connection_context():
            assert store.execute_sql("PRAGMA wal_autocheckpoint").fetchone() == (0,)
            assert store.execute_sql("PRAGMA journal_mode").fetchone() == ("wal",)
    store.close_all()


def test_a_process_whose_data_directory_was_removed_exits_quietly(tmp_path: Path) -> None:
    # A temporary data directory removed before the process ends (a script's, a test's): the
    # WAL it would truncate at exit went with it, and so did the writers' lock file.
    data_dir = tmp_path / "data"
    script = (
        "import shutil, sys; from pathlib import Path;"
        " from skillq.storage.database import open_sqlite;"
        " store = open_sqlite(Path(sys.argv[1]) / 'jobs.db');"
        " store.connect(); store.execute_sql('CREATE TABLE t (x)'); store.close();"
        " shutil.rmtree(sys.argv[1])"
    )
    data_dir.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", script, str(data_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "cannot be opened" not in done.stderr + done.stdout
    assert not data_dir.exists()
