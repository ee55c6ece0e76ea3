"""Writers of a SQLite store take turns on `WriteLock`, between threads and between processes,
and transactions opened through the store's proxy take it too (they did not)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import peewee
import pytest

from skillq.storage.database import database_proxy, open_sqlite
from skillq.storage.sqlite_write_lock import LOCK_FILE_SUFFIX, WriteLock, WriteLockTimeout
from tests.support import ROOT

#: Holds the lock of the file in argv[1] until its stdin closes; says "held" once it has it.
HOLDER = """
import sys
from skillq.storage.sqlite_write_lock import WriteLock
lock = WriteLock(sys.argv[1], timeout=10)
with lock:
    print("held", flush=True)
    sys.stdin.read()
"""


def _holder(database: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(database)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


def _held_elsewhere(lock: WriteLock) -> bool:
    """Whether another thread holds `lock` (this one cannot take it within its timeout)."""
    outcome: list[BaseException | None] = []

    def take() -> None:
        try:
            with lock:
                outcome.append(None)
        except WriteLockTimeout as error:
            outcome.append(error)

    thread = threading.Thread(target=take)
    thread.start()
    thread.join()
    return outcome[0] is not None


def test_a_writer_waits_for_another_process_and_goes_on_when_it_lets_go(tmp_path: Path) -> None:
    database = tmp_path / "jobs.db"
    holder = _holder(database)
    try:
        with pytest.raises(WriteLockTimeout, match="database is locked"):
            WriteLock(str(database), timeout=0.05).acquire()
        waiting = WriteLock(str(database), timeout=30)
        taken = threading.Event()

        def write() -> None:
            with waiting:
                taken.set()

        thread = threading.Thread(target=write)
        thread.start()
        assert not taken.wait(0.2)  # still the other process's turn
        holder.communicate("")  # it lets go and exits
        thread.join()
        assert taken.is_set()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_a_killed_holder_leaves_the_lock_free(tmp_path: Path) -> None:
    database = tmp_path / "jobs.db"
    holder = _holder(database)
    holder.kill()
    holder.wait()
    with WriteLock(str(database), timeout=5):
        pass


def test_a_store_write_is_an_outage_while_another_process_holds_the_turn(tmp_path: Path) -> None:
    """A hung holder costs a writer SQLite's own error after the timeout, not a hang."""
    store = open_sqlite(tmp_path / "jobs.db")
    store.write_lock.timeout = 0.05
    with store.connection_context():
        store.execute_sql("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    holder = _holder(tmp_path / "jobs.db")
    try:
        with store.connection_context(), pytest.raises(peewee.OperationalError):
            store.execute_sql("INSERT INTO t (id) VALUES (1)")
    finally:
        holder.communicate("")
    with store.connection_context():
        store.execute_sql("INSERT INTO t (id) VALUES (1)")
        assert store.execute_sql("SELECT count(*) FROM t").fetchone() == (1,)
    store.close_all()


def test_transactions_through_the_proxy_take_the_write_lock(tmp_path: Path) -> None:
    store = open_sqlite(tmp_path / "jobs.db")
    store.write_lock.timeout = 0.05
    previous = database_proxy.obj
    database_proxy.initialize(store)
    try:
        with store.connection_context(), database_proxy.atomic():
            assert _held_elsewhere(store.write_lock)
        assert not _held_elsewhere(store.write_lock)
    finally:
        database_proxy.initialize(previous)
        store.close_all()


def test_a_forked_child_does_not_share_its_parents_turn(tmp_path: Path) -> None:
    """The descriptor a child inherits shares the parent's `flock`: it must open its own."""
    lock = WriteLock(str(tmp_path / "jobs.db"), timeout=0.05)
    with lock:  # the parent has opened its descriptor before the fork
        pass
    held, checked = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: once the parent holds the turn, taking it must time out
        code = 1
        try:
            os.read(held[0], 1)
            lock.acquire()
        except WriteLockTimeout:
            code = 0
        finally:
            os.write(checked[1], b"x")
            os._exit(code)
    with lock:
        os.write(held[1], b"x")
        os.read(checked[0], 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_without_a_lock_file_the_threads_still_take_turns(tmp_path: Path) -> None:
    """A directory the process cannot write: SQLite's busy handler between processes."""
    lock = WriteLock(str(tmp_path / "missing" / "jobs.db"), timeout=0.05)
    with lock:
        assert _held_elsewhere(lock)
    assert not Path(f"{tmp_path / 'missing' / 'jobs.db'}{LOCK_FILE_SUFFIX}").exists()
    with lock:
        pass


def test_the_sqlite_brokers_writes_take_the_turn_too(tmp_path: Path) -> None:
    """An enqueue and an ack wait for another process's write: dramatiq's ConnectionFailed
    after the timeout (the worker retries), then they go through."""
    from dramatiq.errors import ConnectionFailed
    from dramatiq.message import Message

    from skillq.brokers.sqlite import SQLiteBroker

    broker = SQLiteBroker(path=str(tmp_path / "broker.db"))
    broker.declare_queue("q")
    broker.emit_after("declare_queue", "q")
    message = Message("q", "a", (), {}, {})
    try:
        broker.enqueue(message)
        consumer = broker.consume("q", prefetch=1, timeout=100)
        claimed = next(consumer)
        assert claimed is not None and claimed.message_id == message.message_id
        shared = broker._db.writers
        shared.timeout = 0.05
        holder = _holder(tmp_path / "broker.db")
        try:
            with pytest.raises(ConnectionFailed, match="database is locked"):
                broker.enqueue(Message("q", "a", (), {}, {}))
            with pytest.raises(ConnectionFailed, match="database is locked"):
                consumer.ack(claimed)
        finally:
            holder.communicate("")
        consumer.ack(claimed)
        broker.enqueue(Message("q", "a", (), {}, {}))
        consumer.close()
    finally:
        broker.close()


def test_a_dropped_store_gives_its_lock_file_descriptor_back(tmp_path: Path) -> None:
    """Tests open hundreds of stores in one process: their locks must not keep a descriptor
    each for good."""
    import gc

    for n in range(5):
        store = open_sqlite(tmp_path / f"jobs{n}.db")
        with store.connection_context():
            store.execute_sql("CREATE TABLE t (id INTEGER PRIMARY KEY)")
            store.execute_sql("INSERT INTO t DEFAULT VALUES")  # a write: takes the lock
        assert Path(f"{tmp_path / f'jobs{n}.db'}{LOCK_FILE_SUFFIX}").exists()
        store.close_all()
        del store
        gc.collect()
    links = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the listing's own, closed by now
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
    assert not [
        link for link in links if link.startswith(str(tmp_path)) and link.endswith(LOCK_FILE_SUFFIX)
    ]
