"""PostgreSQL statements prepared once per connection and then only executed.

A worker's two writes per job (`storage.job_writes`) are long statements (an UPDATE and the
metrics' upsert in one) sent thousands of times a second with new values. Sent as text each
time, PostgreSQL parses and plans each one anew and psycopg2 scans the whole text to bind
its values: measured on this project's 2-core box, the start statement took 0.23 ms of the
worker's CPU and ~3.9 ms of wall time under load per call as text, 0.14 ms and ~1.3 ms as
`EXECUTE` of a prepared statement (the server's planning ran on the same cores as everything
else).

A prepared statement lives in the server session of one connection, so which connections
have which statements is kept per connection object (a new or replaced connection prepares
again). A session that lost its statements (`DISCARD ALL` from a pooler, say) prepares again
on the next call when the call runs outside a transaction; inside one the error is raised,
as the transaction is lost anyway.
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
import weakref
from typing import Any

import peewee
import psycopg2.errors

from skillq.storage.database import database_proxy

#: Prepared-statement names per psycopg2 connection (dropped with the connection).
_prepared: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()
#: Put before a statement: its transaction commits without waiting for the log's flush.
_ASYNCHRONOUS = "SET LOCAL synchronous_commit TO off; "


@functools.cache
def _statement(sql: str) -> tuple[str, str]:
    """The name of `sql` (a digest of its text, so two texts never share one) and its
    PREPARE statement, with psycopg2's `%s` placeholders numbered as PostgreSQL's `$n`."""
    name = "skillq_" + hashlib.sha1(sql.encode()).hexdigest()[:16]
    numbers = iter(range(1, sql.count("%s") + 1))
    numbered = re.sub(r"%s", lambda _: f"${next(numbers)}", sql)
    return name, f"PREPARE {name} AS {numbered}"


@functools.cache
def _execute(name: str, count: int) -> str:
    return f"EXECUTE {name} ({', '.join(['%s'] * count)})" if count else f"EXECUTE {name}"


def execute(sql: str, values: list[Any], *, asynchronous_commit: bool = False) -> Any:
    """Run `sql` (psycopg2 placeholders, every value's type settled by the statement itself:
    cast a placeholder PostgreSQL cannot type from its context) with `values`, as a
    statement prepared once on the calling thread's connection; returns the cursor.

    `asynchronous_commit`: run outside a transaction, the statement's own commit returns
    without waiting for its log to reach the disk (`SET LOCAL synchronous_commit` sent in the
    same query string, which PostgreSQL runs as one transaction: no extra round trip).
    Inside a transaction it is ignored: the caller's commit keeps its own durability."""
    name, prepare = _statement(sql)
    connection = database_proxy.connection()
    with _lock:
        names = _prepared.setdefault(connection, set())
    if name not in names:
        _prepare(name, prepare)
        names.add(name)
    statement = _execute(name, len(values))
    if asynchronous_commit and not database_proxy.in_transaction():
        statement = _ASYNCHRONOUS + statement
    try:
        return database_proxy.execute_sql(statement, values)
    except peewee.DatabaseError as error:
        # The session lost its statements (a pooler's DISCARD ALL): prepare again, once.
        if not _caused_by(error, psycopg2.errors.InvalidSqlStatementName):
            raise
        names.discard(name)
        if database_proxy.in_transaction():
            raise
        _prepare(name, prepare)
        names.add(name)
        return database_proxy.execute_sql(statement, values)


def _prepare(name: str, prepare: str) -> None:
    try:
        database_proxy.execute_sql(prepare)
    except peewee.DatabaseError as error:
        # Already there: the session outlived what this process knew of it.
        if not _caused_by(error, psycopg2.errors.DuplicatePreparedStatement):
            raise


def _caused_by(error: peewee.DatabaseError, kind: type[Exception]) -> bool:
    """Whether peewee's `error` wraps the driver's `kind` (peewee keeps it as `orig`)."""
    return isinstance(getattr(error, "orig", None), kind)
