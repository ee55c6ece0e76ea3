"""The statements a piece of the store runs, and how the database plans each: for the tests
that say a query reads an index, never the whole table."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import peewee

from skillq.storage.database import database_proxy


@contextlib.contextmanager
def recorded_statements() -> Iterator[list[tuple[str, list]]]:
    """Every statement (text, values) run through the bound store inside the block."""
    database = database_proxy.obj
    execute = database.execute_sql
    seen: list[tuple[str, list]] = []

    def recording(sql, params=None, *args, **kwargs):
        seen.append((sql, list(params or [])))
        return execute(sql, params, *args, **kwargs)

    database.execute_sql = recording
    try:
        yield seen
    finally:
        del database.execute_sql  # the class's own again


def plan_of(sql: str, params: list) -> str:
    """The database's plan for one statement, as one line. PostgreSQL plans with sequential
    scans off: a test's tiny table would be scanned whatever its indexes."""
    database = database_proxy.obj
    if isinstance(database, peewee.PostgresqlDatabase):
        database.execute_sql("SET enable_seqscan = off")
        explain = "EXPLAIN "
    else:
        explain = "EXPLAIN QUERY PLAN "
    return " ".join(str(row) for row in database.execute_sql(explain + sql, params).fetchall())
