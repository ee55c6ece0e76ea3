"""The frozen schema steps 1-9 (the job table, cancel requests, the worker registry, API
keys, history indexes, search collections, job logs, metrics, desired pools), as
`skillq.storage.migrations` lists them. Each describes its tables as they were at that
version, never the current models; later steps live in modules of their own."""

from __future__ import annotations

import peewee
from playhouse.migrate import SchemaMigrator, migrate

from skillq.storage import search_collections
from skillq.storage.models import JSONField


def job_table_v1(database: peewee.Database) -> type[peewee.Model]:
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


def add_job_cancel_requested_at(database: peewee.Database) -> None:
    """v2: when a client asked to cancel a running job (the worker interrupts it)."""
    migrator = SchemaMigrator.from_database(database)
    field = peewee.DateTimeField(null=True)
    migrate(migrator.add_column("skillq_job", "cancel_requested_at", field))


def drop_job_cancel_requested_at(database: peewee.Database) -> None:
    migrator = SchemaMigrator.from_database(database)
    migrate(migrator.drop_column("skillq_job", "cancel_requested_at"))


def reliability_tables_v3(database: peewee.Database) -> list[type[peewee.Model]]:
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


def add_reliability_v3(database: peewee.Database) -> None:
    """v3: the worker registry, one claim per schedule fire, and when a job was last sent."""
    database.create_tables(reliability_tables_v3(database), safe=False)
    migrator = SchemaMigrator.from_database(database)
    migrate(migrator.add_column("skillq_job", "enqueued_at", peewee.DateTimeField(null=True)))


def drop_reliability_v3(database: peewee.Database) -> None:
    migrator = SchemaMigrator.from_database(database)
    migrate(migrator.drop_column("skillq_job", "enqueued_at"))
    database.drop_tables(reliability_tables_v3(database), safe=False)


def api_key_table_v4(database: peewee.Database) -> type[peewee.Model]:
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


def add_history_indexes_v5(database: peewee.Database) -> None:
    """v5: when jobs started and finished, indexed for the queue history by minute."""
    migrator = SchemaMigrator.from_database(database)
    migrate(*(migrator.add_index("skillq_job", (column,)) for column in _HISTORY_INDEXES))


def drop_history_indexes_v5(database: peewee.Database) -> None:
    migrator = SchemaMigrator.from_database(database)
    migrate(
        *(migrator.drop_index("skillq_job", f"skillq_job_{column}") for column in _HISTORY_INDEXES)
    )


def add_search_collections(database: peewee.Database) -> None:
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


def drop_search_collections(database: peewee.Database) -> None:
    if isinstance(database, peewee.PostgresqlDatabase):
        database.execute_sql("DROP TABLE skillq_collection_document")
        database.execute_sql("DROP TABLE skillq_collection")


def job_log_table_v7(database: peewee.Database) -> type[peewee.Model]:
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


def job_metric_table_v8(database: peewee.Database) -> type[peewee.Model]:
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


def desired_pool_table(database: peewee.Database) -> type[peewee.Model]:
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
