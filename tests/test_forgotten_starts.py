"""A start mark the store forgot still ends in a completed job.

With `storage.synchronous_starts = false` (the default) a worker's start of an attempt does
not wait for PostgreSQL's disk, so a server crash may forget it: the row is again what it was
before the start while the worker runs the job. Nothing crashes PostgreSQL here; the test
writes back what such a crash would leave and checks the rest of the system copes.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import psycopg2

from tests.reliability import Stack
from tests.support import (
    create_postgres_schema,
    drop_postgres_schema,
    postgres_schema_url,
    require_service,
)


def test_a_job_whose_start_mark_the_store_forgot_runs_again_and_completes(
    tmp_path: Path,
) -> None:
    require_service("postgres")
    schema = create_postgres_schema()
    url = postgres_schema_url(schema)
    storage = {"storage": {"backend": "postgres", "url": url}}
    # The first run ends (1.5 s) before the job counts as lost (3 s after it was sent).
    stack = Stack.create("redis", tmp_path, extra=storage, requeue_pending_after_secs=3)
    try:
        stack.start_api()
        stack.start_worker()
        job = stack.submit({"type": "sleep", "params": {"seconds": 1.5}})
        stack.wait_state(job["id"], {"running"})
        with psycopg2.connect(url) as conn, conn.cursor() as cursor:
            cursor.execute(
                "UPDATE skillq_job SET state = 'pending', attempts = 0, started_at = NULL,"
                " worker_id = NULL, heartbeat_at = NULL WHERE id = %s AND state = 'running'"
                " RETURNING now()",
                [job["id"]],
            )
            [(forgotten_at,)] = cursor.fetchall()
        done = stack.wait_state(job["id"], {"completed"}, timeout=60)
        # Started again after the mark was lost, from the message sent again as lost, and
        # completed (the first run's end names a start the row no longer has).
        assert datetime.fromisoformat(done["started_at"]) > forgotten_at
        assert done["attempts"] == 1 and done["result"] is not None
    finally:
        stack.close()
        drop_postgres_schema(schema)
