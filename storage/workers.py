"""The worker registry: one row per worker process, refreshed by its heartbeat.

`GET /api/v1/workers` and `skillq workers status` read it; stale-job recovery and the
duplicate-delivery check use a job's own `heartbeat_at`, which the same beat refreshes, so a
worker is judged alive or dead by one rule everywhere: no beat for `dead_after_secs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import peewee

from skillq.storage.models import BaseModel, Job, JobState, JSONField, utcnow
from skillq.storage.worker_tokens import RemoteWorker


class Worker(BaseModel):
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


@dataclass(frozen=True)
class WorkerStatus:
    worker: Worker
    #: "alive", "stopped" (shut down cleanly) or "dead" (no beat for `dead_after_secs`).
    status: str


def register(worker_id: str, *, host: str, pid: int, queues: list[str], threads: int) -> None:
    """Insert or refresh this process's row (a restarted process may reuse its pid)."""
    now = utcnow()
    fields = {
        "host": host,
        "pid": pid,
        "queues": sorted(queues),
        "threads": threads,
        "started_at": now,
        "last_beat_at": now,
        "stopped_at": None,
        "running_jobs": [],
    }
    if Worker.update(**fields).where(Worker.id == worker_id).execute() == 0:
        try:
            Worker.insert(id=worker_id, **fields).execute()
        except peewee.IntegrityError:  # inserted concurrently under the same id
            Worker.update(**fields).where(Worker.id == worker_id).execute()


def beat(worker_id: str, running_jobs: list[str]) -> None:
    """Record that the process lives, and refresh the heartbeat of the jobs it runs."""
    now = utcnow()
    Worker.update(last_beat_at=now, running_jobs=running_jobs).where(
        Worker.id == worker_id
    ).execute()
    if running_jobs:
        Job.update(heartbeat_at=now).where(
            Job.id.in_(running_jobs)
            & (Job.state == JobState.RUNNING)
            & (Job.worker_id == worker_id)
        ).execute()


def mark_stopped(worker_id: str) -> None:
    Worker.update(stopped_at=utcnow(), running_jobs=[]).where(Worker.id == worker_id).execute()


def list_workers(dead_after_secs: float, *, now: datetime | None = None) -> list[WorkerStatus]:
    """Every registered worker, newest first, each judged alive, stopped or dead."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=dead_after_secs)
    rows = Worker.select().order_by(Worker.started_at.desc(), Worker.id)
    return [WorkerStatus(row, _status(row, cutoff)) for row in rows]


def _status(row: Worker, cutoff: datetime) -> str:
    if row.stopped_at is not None:
        return "stopped"
    return "alive" if row.last_beat_at >= cutoff else "dead"


def prune(older_than_secs: float, *, now: datetime | None = None) -> int:
    """Forget workers stopped or silent for this long; returns how many rows went.

    A remote worker's registration (`worker_tokens.RemoteWorker`) goes with its row: its
    beats refresh only the row, so a registration whose row is gone, and older than the
    cutoff (one being registered has no row yet), is of a worker not seen for as long.
    Should that worker come back, the API answers 404 and it stops."""
    cutoff = (now or utcnow()) - timedelta(seconds=older_than_secs)
    pruned = Worker.delete().where(Worker.last_beat_at < cutoff).execute()
    RemoteWorker.delete().where(
        (RemoteWorker.registered_at < cutoff) & RemoteWorker.id.not_in(Worker.select(Worker.id))
    ).execute()
    return pruned
