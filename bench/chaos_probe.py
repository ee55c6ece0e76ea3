"""`chaos_probe`: a job type for chaos runs that records every execution it begins and ends.

Each execution writes a row (job id, worker pid, start) to its own SQLite file
(`$SKILLQ_CHAOS_RUNS`) before it works and stamps `finished` after, so a run can tell which
jobs ran twice, on which worker, and whether every completed job's side effect exists. Loaded
next to `actors` by the chaos run's worker and API processes; not a job type of skillq.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time

import dramatiq

from skillq import actors  # noqa: F401  (configures the broker this actor is declared on)
from skillq.brokers.progress import current_job_id

SCHEMA = """CREATE TABLE IF NOT EXISTS executions (
    id INTEGER PRIMARY KEY, job_id TEXT NOT NULL, pid INTEGER NOT NULL,
    started REAL NOT NULL, finished REAL)"""

_local = threading.local()


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(SCHEMA)
    return conn


def _db() -> sqlite3.Connection:
    if getattr(_local, "pid", None) != os.getpid():
        _local.conn, _local.pid = connect(os.environ["SKILLQ_CHAOS_RUNS"]), os.getpid()
    return _local.conn


@dramatiq.actor(
    actor_name="chaos_probe",
    queue_name="default",
    params_schema={
        "type": "object",
        "properties": {"seconds": {"type": "number", "minimum": 0, "maximum": 60}},
        "additionalProperties": False,
    },
    description="Record an execution, sleep, record its end (chaos runs only).",
)
def chaos_probe(seconds: float = 0.05) -> dict:
    row = (
        _db()
        .execute(
            "INSERT INTO executions (job_id, pid, started) VALUES (?, ?, ?)",
            (current_job_id(), os.getpid(), time.time()),
        )
        .lastrowid
    )
    time.sleep(seconds)
    _db().execute("UPDATE executions SET finished = ? WHERE id = ?", (time.time(), row))
    return {"pid": os.getpid()}
