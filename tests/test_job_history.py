"""The queue history and oldest pending job, on SQLite and PostgreSQL: per-minute counts
checked against a brute-force replay of the same jobs, owners kept apart, and every query
served by an index.
"""

from __future__ import annotations

import random
import re
import uuid
from datetime import datetime, timedelta

import pytest

from skillq.settings import StorageSettings
from skillq.storage import JobState, jobs
from skillq.storage.job_history import oldest_pending, queue_history
from skillq.storage.models import Job
from tests.statement_plans import plan_of, recorded_statements

NOW = datetime(2026, 11, 30, 12, 0, 30, 250000)
MINUTE = timedelta(minutes=1)


def past_job(
    created: datetime,
    *,
    started: datetime | None = None,
    ended: datetime | None = None,
    state: str = JobState.PENDING,
    owner: str = "local",
    queue: str = "default",
) -> Job:
    job = jobs.insert_job(
        id=str(uuid.uuid4()),
        type="sleep",
        queue=queue,
        params={},
        priority=5,
        max_retries=0,
        expires_at=NOW + timedelta(days=1),
        owner=owner,
    )
    Job.update(created_at=created, started_at=started, completed_at=ended, state=state).where(
        Job.id == job.id
    ).execute()
    return Job.get_by_id(job.id)


def pending_at(rows: list[Job], moment: datetime) -> int:
    """The oracle: jobs that had arrived by `moment` and not yet left the queue."""
    count = 0
    for job in rows:
        left = job.started_at or job.completed_at
        if job.created_at <= moment and (left is None or left > moment):
            count += 1
    return count


def test_a_small_hour_by_hand(store: StorageSettings) -> None:
    at = NOW.replace(second=0, microsecond=0)  # 12:00, the current minute
    past_job(at - 10 * MINUTE, started=at - 9 * MINUTE, ended=at - 8 * MINUTE, state="completed")
    past_job(at - 10 * MINUTE, started=at - 9 * MINUTE, ended=at - 5 * MINUTE, state="failed")
    past_job(at - 7 * MINUTE)  # still waiting
    past_job(at - 3 * MINUTE, ended=at - 2 * MINUTE, state="cancelled")  # never started
    past_job(at - 120 * MINUTE)  # waiting since before the window
    past_job(
        at - 120 * MINUTE, started=at - 100 * MINUTE, ended=at - 90 * MINUTE, state="completed"
    )

    history = queue_history(15, now=NOW)
    assert [b.start for b in history] == [at - (14 - i) * MINUTE for i in range(15)]
    by_start = {b.start: b for b in history}
    assert by_start[at - 8 * MINUTE].completed == 1
    assert by_start[at - 5 * MINUTE].failed == 1
    assert sum(b.completed for b in history) == 1  # the one 90 minutes ago is outside
    assert sum(b.failed for b in history) == 1
    # Waiting at each minute's end: the old one, then the two of 11:50 until 11:51, ...
    assert [b.pending for b in history] == [1, 1, 1, 1, 3, 1, 1, 2, 2, 2, 2, 3, 2, 2, 2]


def test_random_traffic_matches_a_replay(store: StorageSettings) -> None:
    rng = random.Random(12)
    rows = []
    for _ in range(60):
        created = NOW - timedelta(seconds=rng.uniform(0, 5400))
        fate = rng.choice(["pending", "running", "completed", "failed", "cancelled", "unstarted"])
        started = ended = None
        state = fate
        if fate != "pending" and fate != "unstarted":
            started = created + timedelta(seconds=rng.uniform(0, 600))
        if fate in ("completed", "failed", "cancelled"):
            ended = started + timedelta(seconds=rng.uniform(0, 600))
        if fate == "unstarted":
            state, ended = "cancelled", created + timedelta(seconds=rng.uniform(0, 600))
        if (started and started > NOW) or (ended and ended > NOW):
            continue  # the future has not happened yet
        rows.append(past_job(created, started=started, ended=ended, state=state))

    history = queue_history(60, now=NOW)
    assert len(history) == 60
    for bucket in history:
        end = min(bucket.start + MINUTE - timedelta(microseconds=1), NOW)
        assert bucket.pending == pending_at(rows, end), bucket.start
        finished = [j for j in rows if j.completed_at and bucket.start <= j.completed_at < end]
        assert bucket.completed == sum(j.state == "completed" for j in finished)
        assert bucket.failed == sum(j.state == "failed" for j in finished)


def test_owners_see_only_their_own_history_and_queues(store: StorageSettings) -> None:
    at = NOW - 2 * MINUTE
    past_job(at, owner="alice", queue="ai")
    past_job(at - MINUTE, owner="bob", queue="ai")
    past_job(at - 3 * MINUTE, started=at, ended=at, state="completed", owner="bob")
    assert [b.pending for b in queue_history(1, owner="alice", now=NOW)] == [1]
    assert [b.pending for b in queue_history(1, now=NOW)] == [2]
    assert sum(b.completed for b in queue_history(5, owner="alice", now=NOW)) == 0
    assert sum(b.completed for b in queue_history(5, owner="bob", now=NOW)) == 1
    assert oldest_pending() == {"ai": at - MINUTE}
    assert oldest_pending("alice") == {"ai": at}
    assert oldest_pending("carol") == {}


def test_a_running_job_is_not_pending_and_nothing_is_negative(store: StorageSettings) -> None:
    # Started before the window, still running: it left the queue before the window opened.
    past_job(NOW - 90 * MINUTE, started=NOW - 80 * MINUTE, state="running")
    history = queue_history(60, now=NOW)
    assert all(b.pending == 0 and b.completed == 0 for b in history)
    assert oldest_pending() == {}


@pytest.mark.parametrize("owner", [None, "alice"], ids=["every-owner", "one-owner"])
def test_every_history_query_uses_an_index(store: StorageSettings, owner: str | None) -> None:
    """On a table of any size the history reads a window (or one owner's rows), never the
    whole table; without an owner, each minute count ranges over its own column's index, the
    starts over `completed_at`'s (open, or ended after the window opened: schema 19)."""
    with recorded_statements() as seen:
        queue_history(60, owner=owner, now=NOW)
        oldest_pending(owner)
    assert len(seen) == 5
    for sql, params in seen:
        plan = plan_of(sql, params)
        assert re.search(r"(?i)(search|index scan|index only scan|bitmap)", plan), (sql, plan)
        assert not re.search(r"Seq Scan|SCAN (skillq_job|t1)\b(?! USING)", plan), (sql, plan)
        ranged = re.match(r"SELECT CAST\(\w+\(.*?(\w+_at)", sql)
        if ranged and owner is None:
            column = "completed_at" if ranged[1] == "started_at" else ranged[1]
            assert re.search(rf"(?i)\b(index|using|on) \w*?_{column}\w*", plan), (sql, plan)
