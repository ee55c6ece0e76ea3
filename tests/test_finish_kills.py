"""A worker killed while its threads' finish writes wait for their group commit.

The jobs' bodies are over, their outcomes queued for one commit (storage.finish_batches),
and the store is held by another connection so that the commit cannot land; then the worker
is SIGKILLed. Nothing was committed and no message was acked, so each job must be
redelivered, taken over from the dead worker and end `completed` once, never lost or left
`running`, and be counted once.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from skillq.settings import StorageSettings
from tests.reliability import Stack
from tests.support import (
    create_postgres_schema,
    drop_postgres_schema,
    postgres_schema_url,
    require_service,
    wait_for,
)
from tests.test_finish_batches import store_locked

THREADS = 8


@pytest.fixture(params=[("sqlite", "sqlite"), ("redis", "postgres"), ("rabbitmq", "postgres")])
def stack(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Stack, StorageSettings]]:
    broker, backend = request.param
    schema = None
    if backend == "postgres":
        require_service("postgres")
        schema = create_postgres_schema()
        store = StorageSettings(backend="postgres", url=postgres_schema_url(schema))
        storage = {"backend": "postgres", "url": store.url}
    else:
        store = StorageSettings(backend="sqlite", path=tmp_path / "jobs.db")
        storage = {"backend": "sqlite", "path": str(store.path)}
    extra = {"storage": storage, "jobs": {"modules": ["tests.finish_jobs"]}}
    # Lost messages are not re-sent within the test: a job must come back by redelivery,
    # which only a message left unacked gets (recovery would re-send an acked one, later).
    running = Stack.create(broker, tmp_path, extra=extra, requeue_pending_after_secs=3600)
    try:
        running.start_api()
        yield running, store
    finally:
        running.close()
        if schema is not None:
            drop_postgres_schema(schema)


def end_statements_of_dead_clients(holder: Any) -> None:
    """End the statements that wait for the lock `holder` holds (the killed worker's), and
    wait until their sessions are gone.

    PostgreSQL does not notice a client's death while its statement waits for a lock. Once
    the lock went, the leader's finish (one autocommitted statement, already sent) would run
    and commit as if the worker had committed just before it died: that job would then be
    `completed` with one attempt, its redelivery dropped (test_recovery's
    test_a_message_of_a_finished_job_is_dropped covers that case). Here the kill must cut
    every commit short, so the waiters are ended as PostgreSQL ends a dead client's work
    (`pg_terminate_backend` only signals: the wait is for the sessions to be gone)."""
    with holder.cursor() as cursor:
        cursor.execute(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))"
        )
        ended = [pid for pid, terminated in cursor.fetchall() if terminated]

        def gone() -> bool:
            # Within a transaction, pg_stat_activity is read once and then kept, unless cleared.
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (ended,))
            return cursor.fetchone()[0] == 0

        wait_for(gone, timeout=30, what="the dead worker's sessions to end")


def completed_total(stack: Stack) -> int:
    assert stack.client is not None
    text = stack.client.get("/metrics").text
    found = re.search(r'^skillq_jobs_completed_total\{[^}]*type="marked"[^}]*\} (\S+)$', text, re.M)
    return int(float(found.group(1))) if found else 0


def test_jobs_whose_batched_commit_a_kill_cut_short_end_completed_once(
    stack: tuple[Stack, StorageSettings], tmp_path: Path
) -> None:
    system, store = stack
    worker = system.start_worker(threads=THREADS)
    folder = tmp_path / "done"
    folder.mkdir()
    submitted = [
        system.submit(
            {
                "type": "marked",
                "params": {"folder": str(folder), "name": f"job-{i}"},
            }
        )["id"]
        for i in range(THREADS)
    ]
    wait_for(
        lambda: all(system.job(job_id)["state"] == "running" for job_id in submitted),
        timeout=60,
        what="every job to run",
    )
    with store_locked(store) as holder:
        (folder / "go").touch()
        # Every body is over: each thread is now in its finish write, queued behind the
        # leader's, which waits for the lock held here.
        wait_for(lambda: len(list(folder.iterdir())) == THREADS + 1, what="every body to end")
        time.sleep(0.5)  # not a check: lets the last threads get from their body to the write
        system.kill_worker(worker)
        if store.backend == "postgres":
            end_statements_of_dead_clients(holder)
    assert [system.job(job_id)["state"] for job_id in submitted] == ["running"] * THREADS
    system.start_worker(threads=THREADS)
    ended = wait_for(
        lambda: (
            (rows := [system.job(job_id) for job_id in submitted])
            and all(row["state"] != "running" and row["state"] != "pending" for row in rows)
            and rows
        ),
        timeout=90,
        what="every job to end again",
    )
    assert [row["state"] for row in ended] == ["completed"] * THREADS
    # Each ran again on the new worker: the first attempt's end was never committed.
    assert [row["attempts"] for row in ended] == [2] * THREADS
    assert completed_total(system) == THREADS
