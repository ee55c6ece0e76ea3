"""API keys and job statistics in the store, on SQLite and PostgreSQL."""

from __future__ import annotations

import peewee
import pytest

from skillq.settings import StorageSettings
from skillq.storage import api_keys, jobs
from skillq.storage.database import connection
from tests.test_store import new_job


def test_keys_are_stored_as_digests_found_while_active_and_revoked_once(
    store: StorageSettings,
) -> None:
    with connection():
        row, key = api_keys.create_key("ci", "submitter")
        assert key.startswith(api_keys.KEY_PREFIX) and row.digest == api_keys.digest_of(key)
        assert key not in {r.digest for r in api_keys.list_keys()}
        assert api_keys.find_active(key).name == "ci"
        assert api_keys.find_active(key + "x") is None
        with pytest.raises(peewee.IntegrityError):
            api_keys.create_key("ci", "viewer")
    with connection():
        assert api_keys.revoke_key("ci")
        assert not api_keys.revoke_key("ci")
        assert api_keys.find_active(key) is None
        assert [r.revoked for r in api_keys.list_keys()] == [True]


def test_counts_group_by_type_queue_and_state_per_owner(
    store: StorageSettings,
) -> None:
    with connection():
        first = new_job(owner="a")
        new_job(owner="a")
        new_job(owner="b", type="other", queue="q2")
        assert jobs.cancel_pending(first.id)
        everyone = sorted(jobs.count_by_type_queue_state())
        assert everyone == [
            ("other", "q2", "pending", 1),
            ("sleep", "default", "cancelled", 1),
            ("sleep", "default", "pending", 1),
        ]
        assert sorted(jobs.count_by_type_queue_state("b")) == [("other", "q2", "pending", 1)]


def test_request_cancel_marks_only_running_jobs_and_keeps_the_first_time(
    store: StorageSettings,
) -> None:
    with connection():
        job = new_job()
        assert not jobs.request_cancel(job.id)
        assert jobs.mark_running(job.id, attempt=1, worker_id="w")
        assert jobs.request_cancel(job.id)
        first = jobs.get_job(job.id).cancel_requested_at
        assert first is not None
        assert jobs.request_cancel(job.id)
        assert jobs.get_job(job.id).cancel_requested_at == first
