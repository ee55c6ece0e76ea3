"""Schema versions: `skillq db upgrade | downgrade | status`.

Each migration is frozen: it describes the tables as they were at that version, never the
current models, so an old database upgrades through every step exactly as it happened.
Upgrades run under a database-wide lock, so the API, workers and scheduler starting at
once cannot apply the same step twice. Every function works on the database bound with
`storage.bind_database`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import peewee

from skillq.storage import (
    migration_delays,
    migration_v15,
    migration_v16,
    migration_v17,
    migration_v18,
    migration_v19,
    worker_token_migration,
)
from skillq.storage.database import database_proxy
from skillq.storage.dependency_migration import add_dependencies_v11, drop_dependencies_v11
from skillq.storage.limit_migrations import create_limit_tables, drop_limit_tables
from skillq.storage.migrations_v1_v9 import (
    add_history_indexes_v5,
    add_job_cancel_requested_at,
    add_reliability_v3,
    add_search_collections,
    api_key_table_v4,
    desired_pool_table,
    drop_history_indexes_v5,
    drop_job_cancel_requested_at,
    drop_reliability_v3,
    drop_search_collections,
    job_log_table_v7,
    job_metric_table_v8,
    job_table_v1,
)
from skillq.storage.models import utcnow
from skillq.storage.webhook_tables import create_webhook_tables, drop_webhook_tables


class SchemaVersion(peewee.Model):
    version = peewee.IntegerField(primary_key=True)
    description = peewee.TextField()
    applied_at = peewee.DateTimeField()

    class Meta:
        database = database_proxy
        table_name = "skillq_schema_version"


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    upgrade: Callable[[peewee.Database], None]
    downgrade: Callable[[peewee.Database], None]


@dataclass(frozen=True)
class SchemaStatus:
    current: int
    latest: int
    applied: list[tuple[int, str, datetime]]
    pending: list[tuple[int, str]]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "create the job table",
        upgrade=lambda db: job_table_v1(db).create_table(safe=False),
        downgrade=lambda db: job_table_v1(db).drop_table(safe=False),
    ),
    Migration(
        2,
        "job cancel requests",
        upgrade=lambda db: add_job_cancel_requested_at(db),
        downgrade=lambda db: drop_job_cancel_requested_at(db),
    ),
    Migration(
        3,
        "worker registry, schedule fire claims, job enqueue times",
        upgrade=lambda db: add_reliability_v3(db),
        downgrade=lambda db: drop_reliability_v3(db),
    ),
    Migration(
        4,
        "create the api key table",
        upgrade=lambda db: api_key_table_v4(db).create_table(safe=False),
        downgrade=lambda db: api_key_table_v4(db).drop_table(safe=False),
    ),
    Migration(
        5,
        "index job start and finish times",
        upgrade=lambda db: add_history_indexes_v5(db),
        downgrade=lambda db: drop_history_indexes_v5(db),
    ),
    Migration(
        6,
        "search collections in the store (PostgreSQL)",
        upgrade=add_search_collections,
        downgrade=drop_search_collections,
    ),
    Migration(
        7,
        "create the job log table",
        upgrade=lambda db: job_log_table_v7(db).create_table(safe=False),
        downgrade=lambda db: job_log_table_v7(db).drop_table(safe=False),
    ),
    Migration(
        8,
        "create the job metric table",
        upgrade=lambda db: job_metric_table_v8(db).create_table(safe=False),
        downgrade=lambda db: job_metric_table_v8(db).drop_table(safe=False),
    ),
    Migration(
        9,
        "create the desired worker pool table",
        upgrade=lambda db: desired_pool_table(db).create_table(safe=False),
        downgrade=lambda db: desired_pool_table(db).drop_table(safe=False),
    ),
    Migration(
        10,
        "create the webhook event, delivery and attempt tables",
        upgrade=create_webhook_tables,
        downgrade=drop_webhook_tables,
    ),
    Migration(
        11,
        "job dependencies and workflows",
        upgrade=add_dependencies_v11,
        downgrade=drop_dependencies_v11,
    ),
    Migration(
        12,
        "delayed jobs: job scheduled_for",
        upgrade=migration_delays.add_job_scheduled_for,
        downgrade=migration_delays.drop_job_scheduled_for,
    ),
    Migration(
        13,
        "create the job type limit slot and postponed job tables",
        upgrade=create_limit_tables,
        downgrade=drop_limit_tables,
    ),
    Migration(
        14,
        "create the worker token and remote worker tables",
        upgrade=worker_token_migration.add_worker_tokens,
        downgrade=worker_token_migration.drop_worker_tokens,
    ),
    Migration(
        15,
        "create the MCP stream event table",
        upgrade=migration_v15.upgrade,
        downgrade=migration_v15.downgrade,
    ),
    Migration(
        16,
        "create the owner running slot table",
        upgrade=migration_v16.upgrade,
        downgrade=migration_v16.downgrade,
    ),
    Migration(
        17,
        "shard the job metric rows",
        upgrade=migration_v17.upgrade,
        downgrade=migration_v17.downgrade,
    ),
    Migration(
        18,
        "drop the job state index its (state, priority, created_at) index covers",
        upgrade=migration_v18.upgrade,
        downgrade=migration_v18.downgrade,
    ),
    Migration(
        19,
        "index the open jobs instead of state and started_at: a start writes no index",
        upgrade=migration_v19.upgrade,
        downgrade=migration_v19.downgrade,
    ),
)
LATEST_VERSION = max(migration.version for migration in MIGRATIONS)


def schema_status() -> SchemaStatus:
    applied = _applied()
    done = {version for version, _, _ in applied}
    return SchemaStatus(
        current=max(done, default=0),
        latest=LATEST_VERSION,
        applied=applied,
        pending=[(m.version, m.description) for m in MIGRATIONS if m.version not in done],
    )


def upgrade(target: int | None = None) -> list[int]:
    """Apply every missing step up to `target` (default: latest); returns the versions applied."""
    target = LATEST_VERSION if target is None else target
    _check_target(target)
    applied: list[int] = []
    database = database_proxy.obj
    with _MigrationLock(database):
        current = _current_version()
        for migration in MIGRATIONS:
            if current < migration.version <= target:
                migration.upgrade(database)
                SchemaVersion.insert(
                    version=migration.version,
                    description=migration.description,
                    applied_at=utcnow(),
                ).execute()
                applied.append(migration.version)
    return applied


def downgrade(target: int) -> list[int]:
    """Undo steps above `target`, newest first; returns the versions undone."""
    _check_target(target)
    undone: list[int] = []
    database = database_proxy.obj
    with _MigrationLock(database):
        current = _current_version()
        for migration in reversed(MIGRATIONS):
            if target < migration.version <= current:
                migration.downgrade(database)
                SchemaVersion.delete().where(SchemaVersion.version == migration.version).execute()
                undone.append(migration.version)
    return undone


def ensure_schema() -> None:
    """Bring the store to the latest version; one cheap query when it already is."""
    if schema_status().current < LATEST_VERSION:
        upgrade()


def _check_target(target: int) -> None:
    if not 0 <= target <= LATEST_VERSION:
        raise ValueError(f"schema version must be between 0 and {LATEST_VERSION} (got {target})")


def _applied() -> list[tuple[int, str, datetime]]:
    if not database_proxy.table_exists(SchemaVersion._meta.table_name):
        return []
    rows = SchemaVersion.select().order_by(SchemaVersion.version)
    return [(row.version, row.description, row.applied_at) for row in rows]


def _current_version() -> int:
    SchemaVersion.create_table(safe=True)
    return SchemaVersion.select(peewee.fn.MAX(SchemaVersion.version)).scalar() or 0


class _MigrationLock:
    """One transaction holding a database-wide lock for the whole migration run."""

    #: Arbitrary constant key for PostgreSQL's advisory lock ("skq" in ASCII).
    ADVISORY_KEY = 0x736B71

    def __init__(self, database: peewee.Database) -> None:
        self.database = database
        if isinstance(database, peewee.SqliteDatabase):
            # IMMEDIATE takes the write lock at BEGIN, so a second migrator waits, then
            # sees the first one's version rows.
            self.transaction = database.atomic(lock_type="IMMEDIATE")
        else:
            self.transaction = database.atomic()

    def __enter__(self) -> None:
        self.transaction.__enter__()
        if isinstance(self.database, peewee.PostgresqlDatabase):
            self.database.execute_sql("SELECT pg_advisory_xact_lock(%s)", (self.ADVISORY_KEY,))

    def __exit__(self, *exc_info: object) -> None:
        self.transaction.__exit__(*exc_info)
