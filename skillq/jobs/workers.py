"""The worker registry as the API and the CLI show it: each process alive, stopped or dead.

A worker is dead when it has not beaten for `workers.dead_after_secs` (SIGKILL, power loss,
a hung process); its jobs are recovered by stale-job recovery.
"""

from __future__ import annotations

from typing import Any

from skillq.jobs.fields import iso
from skillq.storage import workers
from skillq.storage.database import in_connection


@in_connection
def worker_list(dead_after_secs: float, *, show_jobs: bool = True) -> dict[str, Any]:
    listed = workers.list_workers(dead_after_secs)
    rows = []
    for entry in listed:
        worker = entry.worker
        row = {
            "id": worker.id,
            "host": worker.host,
            "pid": worker.pid,
            "status": entry.status,
            "queues": worker.queues,
            "threads": worker.threads,
            "started_at": iso(worker.started_at),
            "last_beat_at": iso(worker.last_beat_at),
            "stopped_at": iso(worker.stopped_at),
            "jobs_running": len(worker.running_jobs),
        }
        if show_jobs:
            row["running_jobs"] = worker.running_jobs
        rows.append(row)
    counts = {status: 0 for status in ("alive", "stopped", "dead")}
    for entry in listed:
        counts[entry.status] += 1
    return {"workers": rows, "counts": counts, "dead_after_secs": dead_after_secs}
