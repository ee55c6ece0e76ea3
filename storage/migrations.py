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
from playhouse.migrate import SchemaMigrator, migrate

from skillq.storage import (
    migration_delays,
    migration_v15,
    migration_v16,
    migration_v17,
    search_collections,
    worker_token_migration,
)
from skillq.storage.database import database_proxy
from skillq.storage.dependency_migration import add_dependencies_v11, drop_dependencies_v11
from skillq.storage.limit_migrations import create_limit_tables, drop_limit_tables
from skillq.storage.models import JSONField, utcnow
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


def _job_table_v1(database: peewee.Database) -> type[peewee.Model]:
    class JobV1(peewee.Model):
        id = peewee.CharField(max_length=36, primary_key=True)
        type = peewee.CharField(max_length=100, index=True)
        queue = peewee.CharField(max_length=100)
        params = JSONField()
        state = peewee.CharField(max_length=16, index=True)
        priority = peewee.SmallIntegerField(default=5)
        progress = peewee.FloatField(null=True)
        message = peewee.TextField(null=True)
        result = JSONField(null=True)
        error_type = peewee.CharField(max_length=200, null=True)
        error_message = peewee.TextField(null=True)
        attempts = peewee.IntegerField(default=0)
        max_retries = peewee.IntegerField()
        created_at = peewee.DateTimeField(index=True)
        started_at = peewee.DateTimeField(null=True)
        completed_at = peewee.DateTimeField(null=True)
        expires_at = peewee.DateTimeField(index=True)
        owner = peewee.CharField(max_length=200, index=True)
        trace_id = peewee.CharField(max_length=64, null=True, index=True)
        idempotency_key = peewee.CharField(max_length=200, null=True)
        worker_id = peewee.CharField(max_length=200, null=True)
        heartbeat_at = peewee.DateTimeField(null=True)

        class Meta:
            table_name = "skillq_job"
            indexes = (
                (("owner", "idempotency_key"), True),
                (("state", "priority", "created_at"), False),
            )

    JobV1._meta.set_database(database)
    return JobV1


def _add_job_cancel_requested_at(database: peewee.Database) -> None:
    """v2: when a client asked to cancel a running job (the worker interrupts it)."""
    migrator = SchemaMigrator.from_database(database)
    field = peewee.DateTimeField(null=True)
    migrate(migrator.add_column("skillq_job", "cancel_requested_at", field))


def _drop_job_cancel_requested_at(database: peewee.Database) -> None:
    migrator = SchemaMigrator.from_database(database)
    migrate(migrator.drop_column("skillq_job", "cancel_requested_at"))


def _reliability_tables_v3(database: peewee.Database) -> list[type[peewee.Model]]:
    class WorkerV3(peewee.Model):
        id = peewee.CharField(max_length=200, primary_key=True)
        host = peewee.CharField(max_length=200)
        pid = peewee.IntegerField()
        queues = JSONField()
        threads = peewee.IntegerField()
        started_at = peewee.DateTimeField()
        last_beat_at = peewee.DateTimeField(index=True)
        stopped_at = peewee.DateTimeField(null=True)
        running_jobs = JSONField()

        class Meta:
            table_name = "skillq_worker"

    class ScheduleFireV3(peewee.Model):
        name = peewee.CharField(max_length=200)
        fire_at = peewee.DateTimeField()
        job_id = peewee.CharField(max_length=36, null=True)
        claimed_by = peewee.CharField(max_length=200)
        claimed_at = peewee.DateTimeField()

        class Meta:
            table_name = "skillq_schedule_fire"
            indexes = ((("name", "fire_at"), True),)

    for model in (WorkerV3, ScheduleFireV3):
        model._meta.set_database(database)
    return [WorkerV3, ScheduleFireV3]


def _add_reliability_v3(database: peewee.Database) -> None:
    """v3: the worker registry, one claim per schedule fire, and when a job was last sent."""
    database.create_tables(_reliability_tables_v3(database), safe=False)
    migrator = SchemaMigrator.from_database(database)
    migrate(migrator.add_column("skillq_job", "enqueued_at", peewee.DateTimeField(null=True)))


def _drop_reliability_v3(database: peewee.Database) -> None:
    migrator = SchemaMigrator.from_database(database)
    migrate(migrator.drop_column("skillq_job", "enqueued_at"))
    database.drop_tables(_reliability_tables_v3(database), safe=False)


def _api_key_table_v4(database: peewee.Database) -> type[peewee.Model]:
    class ApiKeyV4(peewee.Model):
        name = peewee.CharField(max_length=200, unique=True)
        digest = peewee.CharField(max_length=64, unique=True)
        role = peewee.CharField(max_length=32)
        created_at = peewee.DateTimeField()
        revoked_at = peewee.DateTimeField(null=True)

        class Meta:
            table_name = "skillq_api_key"

    ApiKeyV4._meta.set_database(database)
    return ApiKeyV4


_HISTORY_INDEXES = ("started_at", "completed_at")


def _add_history_indexes_v5(database: peewee.Database) -> None:
    """v5: when jobs started and finished, indexed for the queue history by minute."""
    migrator = SchemaMigrator.from_database(database)
    migrate(*(migrator.add_index("skillq_job", (column,)) for column in _HISTORY_INDEXES))


def _drop_history_indexes_v5(database: peewee.Database) -> None:
    migrator = SchemaMigrator.from_database(database)
    migrate(
        *(migrator.drop_index("skillq_job", f"skillq_job_{column}") for column in _HISTORY_INDEXES)
    )


def _add_search_collections(database: peewee.Database) -> None:
    """Search collections in the store (PostgreSQL only: a SQLite deployment keeps its
    collections in FTS5 files under `search.path`, on the one machine it runs on).

    `embedding` is pgvector's `vector` when the extension can be had, else float32 `bytea`.
    `words` holds at most 250,000 characters of the text: PostgreSQL refuses a tsvector over
    1 MiB of lexemes, and 250,000 characters of at most 4 UTF-8 bytes stay under it.
    """
    if not isinstance(database, peewee.PostgresqlDatabase):
        return
    vector = search_collections.pgvector_type(database) or "bytea"
    database.execute_sql(
        "CREATE TABLE skillq_collection ("
        " id BIGSERIAL PRIMARY KEY,"
        " owner TEXT NOT NULL,"
        " name TEXT NOT NULL,"
        " embedding_model TEXT,"
        " generation BIGINT NOT NULL DEFAULT 0,"
        " UNIQUE (owner, name))"
    )
    database.execute_sql(
        "CREATE TABLE skillq_collection_document ("
        " id BIGSERIAL PRIMARY KEY,"
        " collection_id BIGINT NOT NULL REFERENCES skillq_collection (id) ON DELETE CASCADE,"
        " doc_id TEXT NOT NULL,"
        " content_hash TEXT NOT NULL,"
        " text TEXT NOT NULL,"
        " metadata JSONB NOT NULL,"
        " words TSVECTOR GENERATED ALWAYS AS"
        " (to_tsvector('english'::regconfig, left(text, 250000))) STORED,"
        f" embedding {vector},"
        " UNIQUE (collection_id, doc_id))"
    )
    database.execute_sql(
        "CREATE INDEX skillq_collection_document_words"
        " ON skillq_collection_document USING GIN (words)"
    )


def _drop_search_collections(database: peewee.Database) -> None:
    if isinstance(database, peewee.PostgresqlDatabase):
        database.execute_sql("DROP TABLE skillq_collection_document")
        database.execute_sql("DROP TABLE skillq_collection")


def _job_log_table_v7(database: peewee.Database) -> type[peewee.Model]:
    """A job's kept log lines; they go with their job (ON DELETE CASCADE)."""

    class JobV7(peewee.Model):
        id = peewee.CharField(max_length=36, primary_key=True)

        class Meta:
            table_name = "skillq_job"

    class JobLogLineV7(peewee.Model):
        job = peewee.ForeignKeyField(JobV7, column_name="job_id", on_delete="CASCADE")
        seq = peewee.IntegerField()
        at = peewee.DateTimeField()
        source = peewee.CharField(max_length=16)
        level = peewee.CharField(max_length=16)
        text = peewee.TextField()
        size = peewee.IntegerField()

        class Meta:
            table_name = "skillq_job_log"
            indexes = ((("job", "seq"), True),)

    for model in (JobV7, JobLogLineV7):
        model._meta.set_database(database)
    return JobLogLineV7


def _job_metric_table_v8(database: peewee.Database) -> type[peewee.Model]:
    class JobMetricV8(peewee.Model):
        job_type = peewee.CharField(max_length=100)
        name = peewee.CharField(max_length=32)
        bucket = peewee.CharField(max_length=16)
        observations = peewee.BigIntegerField(default=0)
        total = peewee.DoubleField(default=0.0)

        class Meta:
            table_name = "skillq_job_metric"
            primary_key = peewee.CompositeKey("job_type", "name", "bucket")

    JobMetricV8._meta.set_database(database)
    return JobMetricV8


def _desired_pool_table(database: peewee.Database) -> type[peewee.Model]:
    """v9: the desired threads per queue that `skillq workers scale` records."""

    class DesiredPoolV9(peewee.Model):
        queue = peewee.CharField(max_length=100, primary_key=True)
        threads = peewee.IntegerField()
        updated_at = peewee.DateTimeField()
        updated_by = peewee.CharField(max_length=200)

        class Meta:
            table_name = "skillq_desired_pool"

    DesiredPoolV9._meta.set_database(database)
    return DesiredPoolV9


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "create the job table",
        upgrade=lambda db: _job_table_v1(db).create_table(safe=False),
        downgrade=lambda db: _job_table_v1(db).drop_table(safe=False),
    ),
    Migration(
        2,
        "job cancel requests",
        upgrade=lambda db: _add_job_cancel_requested_at(db),
        downgrade=lambda db: _drop_job_cancel_requested_at(db),
    ),
    Migration(
        3,
        "worker registry, schedule fire claims, job enqueue times",
        upgrade=lambda db: _add_reliability_v3(db),
        downgrade=lambda db: _drop_reliability_v3(db),
    ),
    Migration(
        4,
        "create the api key table",
        upgrade=lambda db: _api_key_table_v4(db).create_table(safe=False),
        downgrade=lambda db: _api_key_table_v4(db).drop_table(safe=False),
    ),
    Migration(
        5,
        "index job start and finish times",
        upgrade=lambda db: _add_history_indexes_v5(db),
        downgrade=lambda db: _drop_history_indexes_v5(db),
    ),
    Migration(
        6,
        "search collections in the store (PostgreSQL)",
        upgrade=_add_search_collections,
        downgrade=_drop_search_collections,
    ),
    Migration(
        7,
        "create the job log table",
        upgrade=lambda db: _job_log_table_v7(db).create_table(safe=False),
        downgrade=lambda db: _job_log_table_v7(db).drop_table(safe=False),
    ),
    Migration(
        8,
        "create the job metric table",
        upgrade=lambda db: _job_metric_table_v8(db).create_table(safe=False),
        downgrade=lambda db: _job_metric_table_v8(db).drop_table(safe=False),
    ),
    Migration(
        9,
        "create the desired worker pool table",
        upgrade=lambda db: _desired_pool_table(db).create_table(safe=False),
        downgrade=lambda db: _desired_pool_table(db).drop_table(safe=False),
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
