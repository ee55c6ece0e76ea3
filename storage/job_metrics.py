"""Job counters and duration histograms, kept in the store so every process adds to the same.

Workers run in other processes, often on other machines, than the API that serves
`/metrics`; each transition adds to a row here (one UPDATE, in the transaction of the
transition itself), and a scrape of any API process reads the totals. Unlike counts of
job rows, these never go down when finished jobs are purged, so they are true Prometheus
counters.

One row per (job type, metric, bucket, shard), the shard being the writer's (`writer_shard`),
so that writers do not queue for one row's lock; readers sum the shards:

- a counter (`completed`, `failed`, `cancelled`, `retried`: an attempt after the first
  started, `postponed`: a delivery held back by a job type's limit) has the bucket "" and
  counts events;
- a histogram (`run_seconds`, `wait_seconds`) has one row per bucket an observation fell in
  (not cumulative: each observation touches one row), its upper bound as the bucket, with
  the observations' count and sum. `histograms` makes them cumulative, as Prometheus wants.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import os
import threading
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

import peewee

from skillq.storage.database import database_proxy
from skillq.storage.models import BaseModel

COUNTERS = ("completed", "failed", "cancelled", "retried", "postponed")
HISTOGRAMS = ("run_seconds", "wait_seconds")
#: Upper bounds, in seconds: jobs last from milliseconds (a sleep of 0) to an hour (an index).
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, math.inf)


class JobMetric(BaseModel):
    job_type = peewee.CharField(max_length=100)
    name = peewee.CharField(max_length=32)
    #: A histogram bucket's upper bound ("0.5", "+Inf"), or "" for a counter.
    bucket = peewee.CharField(max_length=16)
    #: Which writer's share of the row this is (`writer_shard`); readers sum the shards (v17).
    shard = peewee.SmallIntegerField(default=0)
    observations = peewee.BigIntegerField(default=0)
    total = peewee.DoubleField(default=0.0)

    class Meta:
        table_name = "skillq_job_metric"
        primary_key = peewee.CompositeKey("job_type", "name", "bucket", "shard")


#: Shards of each metric row. Writers that add to the same row wait for each other's
#: commit on PostgreSQL (its row lock); each thread adds to a shard of its own instead.
SHARDS = 16
_next_shard = itertools.count(os.getpid() * 7)
_writer = threading.local()


def writer_shard() -> int:
    """The calling thread's shard: the threads of a process take consecutive shards (from
    one offset by its pid, so processes spread too) and keep them."""
    shard = getattr(_writer, "shard", None)
    if shard is None:
        shard = _writer.shard = next(_next_shard) % SHARDS
    return shard


def _bucket_label(bound: float) -> str:
    return "+Inf" if bound == math.inf else f"{bound:g}"


def record(
    job_type: str, counter: str | None = None, durations: Mapping[str, float] | None = None
) -> None:
    """Count one `counter` event (completed, failed, cancelled, retried) of `job_type` and
    record its `durations` (run_seconds, wait_seconds), in one statement: a multi-row upsert,
    so two processes adding to a new row at once both count."""
    add([(job_type, *row) for row in metric_rows(counter, durations)])


def add(rows: list[tuple[str, str, str, int, float]]) -> None:
    """Add `(job_type, name, bucket, observations, total)` rows, each at most once (an
    upsert may not touch a row twice), in the calling thread's shard: the metrics of several
    transitions written together (`storage.job_writes.finish_many`), in one statement."""
    if not rows:
        return
    shard = writer_shard()
    values = [
        value
        for job_type, name, bucket, n, total in rows
        for value in (job_type, name, bucket, shard, n, total)
    ]
    database_proxy.execute_sql(_upsert_sql(database_proxy.param, len(rows)), values)


def metric_rows(
    counter: str | None = None, durations: Mapping[str, float] | None = None
) -> list[tuple[str, str, int, float]]:
    """The (name, bucket, observations, total) rows `record` adds to, for statements that
    add them themselves (`storage.job_writes` on PostgreSQL)."""
    rows = []
    if counter is not None:
        if counter not in COUNTERS:
            raise ValueError(f"unknown job counter {counter!r}")
        rows.append((counter, "", 1, 1.0))
    for name, seconds in (durations or {}).items():
        if name not in HISTOGRAMS:
            raise ValueError(f"unknown job histogram {name!r}")
        rows.append((name, bucket_of(seconds), 1, max(0.0, seconds)))
    return rows


def bucket_of(seconds: float) -> str:
    """The label of the histogram bucket a duration falls in."""
    return _bucket_label(BUCKETS[bisect.bisect_left(BUCKETS, max(0.0, seconds))])


def bucket_sql(seconds: str) -> str:
    """`bucket_of` as a PostgreSQL expression of the duration expression `seconds`."""
    bounds = ", ".join(f"({_float_sql(bound)}, '{_bucket_label(bound)}')" for bound in BUCKETS)
    return (
        f"(SELECT label FROM (VALUES {bounds}) AS bucket (bound, label)"
        f" WHERE bound >= GREATEST({seconds}, 0) ORDER BY bound LIMIT 1)"
    )


def _float_sql(value: float) -> str:
    return "'Infinity'::float8" if value == math.inf else f"{value!r}::float8"


@functools.cache
def _upsert_sql(p: str, count: int) -> str:
    """The upsert as SQL built once per database and row count (SQLite and PostgreSQL share
    the syntax): peewee building it cost more than running it, twice per job."""
    row = f"({p}, {p}, {p}, {p}, {p}, {p})"
    return f"{INSERT_SQL} VALUES {', '.join([row] * count)} {UPSERT_CONFLICT}"


_TABLE = f'"{JobMetric._meta.table_name}"'
#: The head of an insert of metric rows (job_type, name, bucket, shard, observations, total).
INSERT_SQL = f"INSERT INTO {_TABLE} (job_type, name, bucket, shard, observations, total)"
#: The tail of that insert: a row that exists is added to.
UPSERT_CONFLICT = (
    "ON CONFLICT (job_type, name, bucket, shard) DO UPDATE SET"
    f" observations = {_TABLE}.observations + EXCLUDED.observations,"
    f" total = {_TABLE}.total + EXCLUDED.total"
)


def count(job_type: str, name: str) -> None:
    """One more `name` event of `job_type`."""
    record(job_type, name)


def observe(job_type: str, name: str, seconds: float) -> None:
    """One duration `name` of `job_type`."""
    record(job_type, durations={name: seconds})


@dataclass
class Histogram:
    """One job type's histogram: cumulative counts per upper bound, as Prometheus has them."""

    buckets: list[tuple[str, int]] = field(default_factory=list)
    count: int = 0
    sum: float = 0.0


def counters() -> dict[tuple[str, str], int]:
    """`{(counter name, job type): total}` for every counter that has counted anything."""
    rows = _summed().where(JobMetric.bucket == "")
    return {(name, job_type): int(observations) for job_type, name, _, observations, _ in rows}


def histograms() -> dict[tuple[str, str], Histogram]:
    """`{(histogram name, job type): Histogram}` with every bucket, empty ones included."""
    per_bucket: dict[tuple[str, str], dict[str, tuple[int, float]]] = defaultdict(dict)
    for job_type, name, bucket, observations, total in _summed().where(JobMetric.bucket != ""):
        per_bucket[(name, job_type)][bucket] = (int(observations), total)
    result: dict[tuple[str, str], Histogram] = {}
    for key, rows in per_bucket.items():
        histogram = Histogram()
        for bound in BUCKETS:
            label = _bucket_label(bound)
            observations, total = rows.get(label, (0, 0.0))
            histogram.count += observations
            histogram.sum += total
            histogram.buckets.append((label, histogram.count))
        result[key] = histogram
    return result


def _summed() -> peewee.ModelSelect:
    """(job_type, name, bucket, observations, total) rows, their shards summed."""
    return (
        JobMetric.select(
            JobMetric.job_type,
            JobMetric.name,
            JobMetric.bucket,
            peewee.fn.SUM(JobMetric.observations),
            peewee.fn.SUM(JobMetric.total),
        )
        .group_by(JobMetric.job_type, JobMetric.name, JobMetric.bucket)
        .tuples()
    )
