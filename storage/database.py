"""Opening the store's database, for SQLite and PostgreSQL alike.

The store takes plain values (a backend name, a path or URL, a pool size), never the settings
object: it sits below everything that reads settings.

Models are bound to one `DatabaseProxy`, so a process opens its database once at start-up
(`bind_database`) and every query module uses it without passing a handle around.

Both backends are connection pools, and a unit of work (an API request, a message being
processed) checks a connection out with `connection()` and returns it at the end. Threads
come and go (Starlette's thread pool, dramatiq's workers); a connection held by each thread
forever would exhaust PostgreSQL's pool.

Both pools hold at most `pool_size` connections; a unit of work that finds them all in use
waits up to `POOL_WAIT_SECS` for one. A process must fit its concurrent units of work in the
pool: a worker holds one per running job (its threads) plus short ones for its heartbeat,
stale-job recovery, cancellation watcher and registry; the API gives its requests
`pool_size - 2` threads and keeps two for the probes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import peewee
from playhouse.pool import MaxConnectionsExceeded, PooledPostgresqlDatabase, PooledSqliteDatabase
from psycopg2.extensions import TRANSACTION_STATUS_IDLE

from skillq.errors import ServiceUnavailable
from skillq.storage.sqlite_wal import start_checkpointer
from skillq.storage.sqlite_write_lock import WriteLock, shared_write_lock

logger = logging.getLogger(__name__)


class _StoreProxy(peewee.DatabaseProxy):
    """Peewee's proxy opens a transaction itself, never asking the database for one, so a
    transaction opened through it (`database_proxy.atomic()`, `Model._meta.database.atomic()`:
    nearly all of ours) skipped `_SqliteStore.atomic` and its write lock: its writers met
    other threads' and processes' on SQLite's busy handler."""

    def atomic(self, *args: Any, **kwargs: Any) -> Any:
        if self.obj is None:
            raise AttributeError("Cannot use uninitialized Proxy.")
        return self.obj.atomic(*args, **kwargs)


database_proxy = _StoreProxy()

#: Milliseconds a writer waits for SQLite's lock before giving up. Workers, the API and the
#: scheduler are separate processes writing the same file, so contention is normal.
SQLITE_BUSY_TIMEOUT_MS = 10_000
#: Seconds a unit of work waits for a free pooled connection before giving up.
POOL_WAIT_SECS = 30
#: A pooled PostgreSQL connection given back longer ago than this is pinged before reuse.
PING_IDLE_SECS = 1.0

#: What the drivers raise when the store cannot be reached or used right now (refused or
#: dropped connection, a lock held past the busy timeout, an exhausted pool): not a bug in
#: the query, and worth retrying later.
STORE_OUTAGES = (peewee.OperationalError, peewee.InterfaceError, MaxConnectionsExceeded)


def open_database(
    backend: str,
    *,
    path: Path | str | None = None,
    url: str | None = None,
    pool_size: int = 10,
    synchronous_starts: bool = False,
) -> peewee.Database:
    """A database handle for `backend` ("sqlite" at `path`, or "postgres" at `url`).

    Connections open lazily, one per unit of work, from a pool of `pool_size`.
    `synchronous_starts`: PostgreSQL only, see `_PostgresStore.synchronous_starts`.
    """
    if backend == "postgres":
        return _open_postgres(url or "", pool_size, synchronous_starts)
    if path is None:
        raise ValueError("a SQLite store needs a path")
    return open_sqlite(Path(path), pool_size)


#: Statements that write, for `_SqliteStore`'s write lock.
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


class _SqliteStore(PooledSqliteDatabase):
    """SQLite has one writer at a time. Threads of one process that want the lock together
    fall into SQLite's busy handler, which sleeps 1, 2, 5, ... up to 100 ms between tries, so
    eight worker threads writing twice per job spent more time asleep than writing (measured:
    half the transactions per second of the same writes taken in turn). Here writers take
    `WriteLock` first, which hands the write over at once, between the threads of a process
    and between processes (`skillq.storage.sqlite_write_lock`).

    Held for a transaction (`atomic`) and for a write statement outside one; reads never
    take it (WAL readers do not block)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.write_lock = shared_write_lock(self.database, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)

    def _add_conn_hooks(self, conn: object) -> None:
        # Runs once per new connection (a checkout from the pool does not come here), after
        # the pragmas, so this process's checkpointer starts once the file is in WAL mode.
        super()._add_conn_hooks(conn)
        start_checkpointer(self.database)

    def atomic(self, *args: Any, **kwargs: Any) -> _Locked:
        return _Locked(self.write_lock, super().atomic(*args, **kwargs))

    def execute_sql(self, sql: str, params: Any = None) -> Any:
        if self.in_transaction() or not sql.lstrip()[:7].upper().startswith(_WRITES):
            return super().execute_sql(sql, params)
        with self.write_lock:
            return super().execute_sql(sql, params)


class _Locked:
    """`transaction` (a peewee atomic block) run while holding `lock`; usable as a decorator
    too, as peewee's own."""

    def __init__(self, lock: WriteLock, transaction: Any) -> None:
        self.lock = lock
        self.transaction = transaction

    def __enter__(self) -> Any:
        self.lock.acquire()
        try:
            return self.transaction.__enter__()
        except BaseException:
            self.lock.release()
            raise

    def __exit__(self, *exc_info: Any) -> Any:
        try:
            return self.transaction.__exit__(*exc_info)
        finally:
            self.lock.release()

    def __call__(self, function: Callable[P, R]) -> Callable[P, R]:
        @wraps(function)
        def locked(*args: P.args, **kwargs: P.kwargs) -> R:
            with self:
                return function(*args, **kwargs)

        return locked


def open_sqlite(path: Path, pool_size: int = 10) -> PooledSqliteDatabase:
    """SQLite in WAL mode so readers never block the single writer.

    `synchronous=NORMAL` in WAL mode survives process crashes; only a power cut can drop the
    last commits, which is the usual trade-off for an embedded job store. Checkpoints run in
    the background (see `skillq.storage.sqlite_wal`, which also bounds the WAL's size), not
    in whichever request commits.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    return _SqliteStore(
        str(path),
        max_connections=pool_size,
        stale_timeout=None,
        # Peewee's pool `timeout` is the wait for a free connection; SQLite's own lock wait
        # is the `busy_timeout` pragma.
        timeout=POOL_WAIT_SECS,
        check_same_thread=False,
        pragmas={
            "journal_mode": "wal",
            "synchronous": "normal",
            "busy_timeout": SQLITE_BUSY_TIMEOUT_MS,
            "foreign_keys": 1,
            # Checkpoints are the background thread's job (`skillq.storage.sqlite_wal`).
            "wal_autocheckpoint": 0,
        },
    )


class _PostgresStore(PooledPostgresqlDatabase):
    """Peewee's pool pings (`SELECT 1`) every connection it hands out, under the pool's lock:
    76-154 us per unit of work, a worker's busiest threads queueing behind each other. Here
    a connection given back less than `PING_IDLE_SECS` ago, idle and not closed, is handed out
    as it is; one idle for longer is pinged as before, so a connection the server dropped
    while it sat in the pool (a restart, an idle timeout) is still replaced, not used."""

    #: Whether a worker's start of an attempt (`storage.job_writes.start_pending`) waits for
    #: its commit to reach the disk, as every other write does. It need not: a start mark
    #: the server forgets in a crash leaves the job pending as it was before the start, the
    #: attempt's end then writes nothing (it names a start the row no longer has), and the job
    #: is sent again as a lost message (`storage.job_recovery.lost_pending`) and runs again,
    #: as a job whose worker died does. Not waiting takes the flush's wait off every start
    #: (idle start p50 -0.4 ms here) and ~60 µs of the server's CPU. A later commit that
    #: waits (any submit or end) flushes the log up to it, so only the last moments' starts
    #: are at risk.
    synchronous_starts: bool

    def __init__(self, *args: Any, synchronous_starts: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.synchronous_starts = synchronous_starts
        self._returned_at: dict[int, float] = {}

    def _is_closed(self, conn: Any) -> bool:
        returned = self._returned_at.pop(self.conn_key(conn), None)
        if (
            returned is not None
            and time.monotonic() - returned < PING_IDLE_SECS
            and not conn.closed
            and conn.get_transaction_status() == TRANSACTION_STATUS_IDLE
        ):
            return False
        return super()._is_closed(conn)

    def _close(self, conn: Any, close_conn: bool = False) -> None:
        super()._close(conn, close_conn)
        if not (close_conn or conn.closed):
            self._returned_at[self.conn_key(conn)] = time.monotonic()


def _open_postgres(url: str, pool_size: int, synchronous_starts: bool) -> PooledPostgresqlDatabase:
    """A connection pool; query parameters of the URL pass through to psycopg2 (e.g. options)."""
    parts = urlsplit(url)
    connect_kwargs: dict[str, object] = dict(parse_qsl(parts.query))
    if parts.hostname:
        connect_kwargs["host"] = parts.hostname
    if parts.port:
        connect_kwargs["port"] = parts.port
    if parts.username:
        connect_kwargs["user"] = unquote(parts.username)
    if parts.password:
        connect_kwargs["password"] = unquote(parts.password)
    return _PostgresStore(
        unquote(parts.path.lstrip("/")) or "postgres",
        max_connections=pool_size,
        stale_timeout=300,
        timeout=POOL_WAIT_SECS,
        synchronous_starts=synchronous_starts,
        **connect_kwargs,
    )


def bind_database(database: peewee.Database) -> peewee.Database:
    """Point every model at `database` for the rest of the process."""
    database_proxy.initialize(database)
    return database


P = ParamSpec("P")
R = TypeVar("R")


def connection() -> peewee.ConnectionContext:
    """Holds one pooled connection for a block; nested blocks share it."""
    return database_proxy.connection_context()


def in_connection(function: Callable[P, R]) -> Callable[P, R]:
    """Runs `function` as one unit of work on one pooled connection.

    For the services behind the API, MCP and the CLI, which speak skillq's errors: a store
    outage leaves as `ServiceUnavailable`. `connection()` leaves the driver's errors alone
    for code that handles them itself (probes, the worker's middleware)."""

    @wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            with database_proxy.connection_context():
                return function(*args, **kwargs)
        except STORE_OUTAGES as error:
            logger.warning("The job store is unavailable: %s", error)
            raise ServiceUnavailable("the job store is unavailable; try again later") from error

    return wrapper
