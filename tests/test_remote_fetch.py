"""The server side of remote workers, in process on each store: which jobs a remote worker
is handed (queues, capabilities, skills), the same start rules as a local worker's (limit
slots included), leases that expire into a re-sent message, reports only from the lease
holder, retries by the server's rules; and the routes refuse user credentials."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

import dramatiq
import jwt
import pytest
from dramatiq.brokers.stub import StubBroker
from starlette.testclient import TestClient

from skillq import actors
from skillq.api.app import create_app
from skillq.brokers.factory import job_middleware
from skillq.brokers.job_status import JOB_ID_OPTION, JobStatus
from skillq.brokers.limit_rules import Limit, OwnerLimit
from skillq.brokers.limiter import attempt_holder
from skillq.errors import Conflict
from skillq.jobs import remote_reports
from skillq.jobs.coordinator import JobCoordinator
from skillq.jobs.recovery import recover_stale_jobs
from skillq.jobs.release import DependencyRelease
from skillq.jobs.remote_fetch import RemoteFetch
from skillq.jobs.types import JobTypeOptions
from skillq.settings import AuthSettings, JwtSettings, Settings, StorageSettings, WorkerSettings
from skillq.storage import Job, jobs, limit_tables, limit_usage, worker_tokens, workers
from skillq.storage.database import connection
from skillq.storage.models import utcnow
from tests.support import LOCAL_URL

WORKERS = WorkerSettings(max_retries=1, retry_delay_secs=0, dead_after_secs=2)
PARAMS = {"type": "object"}


@pytest.fixture
def system(store: StorageSettings) -> Iterator[tuple[StubBroker, RemoteFetch, JobCoordinator]]:
    broker = StubBroker(middleware=[*job_middleware(WORKERS), JobTypeOptions()])

    @dramatiq.actor(broker=broker, actor_name="plain", queue_name="default", params_schema=PARAMS)
    def plain() -> None: ...

    @dramatiq.actor(
        broker=broker,
        actor_name="on_gpu",
        queue_name="default",
        params_schema=PARAMS,
        requires=["gpu"],
    )
    def on_gpu() -> None: ...

    @dramatiq.actor(
        broker=broker,
        actor_name="once",
        queue_name="default",
        params_schema=PARAMS,
        run_once=True,
    )
    def once() -> None: ...

    @dramatiq.actor(
        broker=broker, actor_name="execute_skill", queue_name="skill", params_schema=PARAMS
    )
    def execute_skill(skill: str) -> None: ...

    settings = Settings(workers=WORKERS, storage=store)
    # As on a worker (actors/process.py): what runs once a job's outcome is recorded.
    broker.add_middleware(DependencyRelease(settings), before=JobStatus)
    yield broker, RemoteFetch(broker, settings), JobCoordinator(broker, settings)
    broker.close()


def _submit(broker: StubBroker, actor_name: str, owner: str = "alice", **kwargs: object) -> str:
    job_id = str(uuid.uuid4())
    with connection():
        jobs.insert_job(
            id=job_id,
            type=actor_name,
            queue=broker.get_actor(actor_name).queue_name,
            params=kwargs,
            priority=5,
            max_retries=1,
            expires_at=utcnow() + timedelta(hours=1),
            owner=owner,
        )
    broker.get_actor(actor_name).send_with_options(kwargs=kwargs, **{JOB_ID_OPTION: job_id})
    return job_id


def _worker(
    queues: tuple[str, ...] = ("default",), capabilities: tuple[str, ...] = (), skills=None
) -> worker_tokens.RemoteWorker:
    with connection():
        token, _ = worker_tokens.create_token(uuid.uuid4().hex[:8], list(queues), [])
        return worker_tokens.register_worker(
            token.name, queues=list(queues), capabilities=list(capabilities), skills=skills
        )


def _job(job_id: str) -> Job:
    with connection():
        return jobs.get_job(job_id)


def test_a_job_goes_only_to_a_worker_with_what_its_type_requires(system) -> None:
    broker, fetch, _ = system
    gpu_job = _submit(broker, "on_gpu")
    assert fetch.fetch(_worker(), wait_secs=0.3) is None
    assert _job(gpu_job).state == "pending"  # put back for another consumer
    handed = fetch.fetch(_worker(capabilities=("gpu",)), wait_secs=1)
    assert handed is not None and handed.job_id == gpu_job and handed.owner == "alice"
    assert _job(gpu_job).state == "running" and _job(gpu_job).worker_id.startswith("remote-")
    assert broker.queues["default"].qsize() == 0  # acknowledged: no second delivery


def test_a_skill_list_restricts_skill_jobs(system) -> None:
    broker, fetch, _ = system
    job_id = _submit(broker, "execute_skill", skill="ocr")
    assert fetch.fetch(_worker(("skill",), skills=["translate"]), wait_secs=0.3) is None
    handed = fetch.fetch(_worker(("skill",), skills=["ocr"]), wait_secs=1)
    assert handed is not None and handed.job_id == job_id and handed.kwargs == {"skill": "ocr"}


def test_a_duplicate_message_of_a_leased_job_is_not_run_again(system) -> None:
    broker, fetch, _ = system
    job_id = _submit(broker, "plain")
    first = _worker()
    assert fetch.fetch(first, wait_secs=1).attempt == 1
    broker.get_actor("plain").send_with_options(kwargs={}, **{JOB_ID_OPTION: job_id})
    assert fetch.fetch(_worker(), wait_secs=0.3) is None  # deferred: its lease is fresh
    assert _job(job_id).worker_id == first.id and _job(job_id).attempts == 1


def test_an_expired_lease_sends_the_job_again_and_counts_the_attempt(system) -> None:
    broker, fetch, _ = system
    job_id = _submit(broker, "plain")
    once_id = _submit(broker, "once")
    lost = _worker()
    assert {fetch.fetch(lost, 1).job_id, fetch.fetch(lost, 1).job_id} == {job_id, once_id}
    with connection():
        Job.update(heartbeat_at=utcnow() - timedelta(seconds=10)).execute()
    recovery = recover_stale_jobs(Settings(workers=WORKERS), broker)
    assert (recovery.released, recovery.resent, recovery.failed) == (1, 1, 1)
    assert _job(once_id).state == "failed" and _job(once_id).error_type == "WorkerLost"
    again = fetch.fetch(_worker(), wait_secs=1)
    assert again.job_id == job_id and again.attempt == 2
    with pytest.raises(Conflict), connection():  # the lost worker's late report
        remote_reports.complete(lost, job_id, 1, {"late": True}, 0.1, 1000)


def test_only_the_lease_holder_reports_and_a_failure_is_retried_by_the_servers_rules(
    system,
) -> None:
    broker, fetch, coordinator = system
    job_id = _submit(broker, "plain")
    holder, other = _worker(), _worker()
    assert fetch.fetch(holder, 1).attempt == 1
    with connection():
        with pytest.raises(Conflict):
            remote_reports.complete(other, job_id, 1, {"forged": True}, 0.1, 1000)
        with pytest.raises(Conflict):
            remote_reports.progress(holder, job_id, 2, 0.5, "wrong attempt")
        assert remote_reports.progress(holder, job_id, 1, 0.5, "half") is False
        state = remote_reports.fail(
            coordinator, holder, job_id, 1, ("OSError", "disk"), retryable=True, run_seconds=0.1
        )
    assert state == "pending" and _job(job_id).progress == 0.5
    retried = fetch.fetch(other, 1)  # the retry's message, sent again by the server
    assert retried.attempt == 2
    with connection():
        state = remote_reports.fail(
            coordinator, other, job_id, 2, ("OSError", "disk"), retryable=True, run_seconds=0.1
        )
    assert state == "failed" and _job(job_id).attempts == 2  # max_retries = 1


def test_a_remote_outcome_releases_dependants_at_once(system) -> None:
    """Not at the next recovery sweep: the API runs the hooks a worker runs after an outcome."""
    broker, fetch, coordinator = system
    with connection():
        first = coordinator.submit_job({"type": "plain", "params": {}}, owner="alice").job
        after = coordinator.submit_job(
            {"type": "plain", "params": {}, "depends_on": [first.id]}, owner="alice"
        ).job
    assert _job(after.id).waiting
    holder = _worker()
    assert fetch.fetch(holder, wait_secs=1).job_id == first.id
    with connection():
        assert remote_reports.complete(holder, first.id, 1, {}, 0.1, 1000, broker) == "completed"
    assert not _job(after.id).waiting
    assert fetch.fetch(holder, wait_secs=1).job_id == after.id  # its message was sent


def test_a_heartbeat_renews_leases_and_says_what_to_stop(system) -> None:
    broker, fetch, _ = system
    job_id = _submit(broker, "plain")
    holder = _worker()
    fetch.fetch(holder, 1)
    stranger = str(uuid.uuid4())
    with connection():
        jobs.request_cancel(job_id)
        answer = remote_reports.heartbeat(holder, [job_id, stranger])
    assert answer == {"cancel": [job_id], "lost": [stranger]}


@pytest.fixture
def limited(store: StorageSettings) -> Iterator[tuple[StubBroker, RemoteFetch, JobCoordinator]]:
    """`capped` runs one at a time; an owner runs at most two jobs at once."""
    middleware = job_middleware(
        WORKERS, limits={"capped": Limit(max_concurrent=1)}, owners=OwnerLimit(max_running=2)
    )
    broker = StubBroker(middleware=[*middleware, JobTypeOptions()])
    for name in ("capped", "plain"):
        dramatiq.actor(
            lambda: None, broker=broker, actor_name=name, queue_name="default", params_schema=PARAMS
        )
    settings = Settings(workers=WORKERS, storage=store)
    # As on a worker (actors/process.py): what runs once a job's outcome is recorded.
    broker.add_middleware(DependencyRelease(settings), before=JobStatus)
    yield broker, RemoteFetch(broker, settings), JobCoordinator(broker, settings)
    broker.close()


def test_a_remote_fetch_takes_limit_slots_and_its_reports_give_them_back(limited) -> None:
    broker, fetch, coordinator = limited
    first, second = _submit(broker, "capped"), _submit(broker, "capped")
    worker = _worker()
    assert fetch.fetch(worker, 1).job_id == first
    # The type's one slot is taken: the second is postponed, not handed out.
    assert fetch.fetch(worker, 0.3) is None
    assert (_job(second).state, _job(second).attempts) == ("pending", 0)
    with connection():
        assert limit_usage.usage()["capped"] == limit_usage.Usage(running=1, postponed=1)
        remote_reports.complete(worker, first, 1, None, 0.1, 1000, broker)
    # The report freed the slot and woke the second, its slot reserved for it.
    assert fetch.fetch(worker, 1).job_id == second
    # alice runs `second`; with one plain job she is at max_running = 2.
    plain, over = _submit(broker, "plain"), _submit(broker, "plain")
    assert fetch.fetch(worker, 1).job_id == plain
    assert fetch.fetch(worker, 0.3) is None
    with connection():
        assert limit_usage.owner_usage("alice")["alice"]["postponed"] == 1
        assert remote_reports.heartbeat(worker, [second, plain], broker)["lost"] == []
        state = remote_reports.fail(
            coordinator, worker, second, 1, ("OSError", "x"), retryable=False, run_seconds=0.1
        )
    assert state == "failed"
    # A capped job's end lets alice's waiting plain job start.
    assert fetch.fetch(worker, 1).job_id == over
    # A worker that stops beating loses its slots once their lease runs out.
    with connection():
        limit_tables.OwnerSlot.update(expires_at=utcnow() - timedelta(seconds=1)).where(
            limit_tables.OwnerSlot.holder == attempt_holder(plain, 1)
        ).execute()
    bobs, alices = _submit(broker, "plain", owner="bob"), _submit(broker, "plain")
    handed = {fetch.fetch(worker, 1).job_id, fetch.fetch(worker, 1).job_id}
    assert handed == {bobs, alices}


def test_remote_workers_not_seen_for_the_retention_are_pruned(store: StorageSettings) -> None:
    """With their registry rows, as local workers are (`prune_registry`, a day)."""
    silent, beating, fresh = _worker(), _worker(), _worker()
    with connection():
        for worker in (silent, beating):
            workers.register(worker.id, host="h", pid=1, queues=["default"], threads=1)
        day_ago = utcnow() - timedelta(days=1)
        worker_tokens.RemoteWorker.update(registered_at=day_ago).where(
            worker_tokens.RemoteWorker.id != fresh.id
        ).execute()
        workers.Worker.update(last_beat_at=day_ago).where(workers.Worker.id == silent.id).execute()
        # `fresh` registered just now and has no registry row yet: it is being registered.
        assert workers.prune(3600) == 1
        left = {row.id for row in worker_tokens.RemoteWorker.select()}
        assert left == {beating.id, fresh.id}
        assert [s.worker.id for s in workers.list_workers(60)] == [beating.id]
        assert worker_tokens.get_worker(silent.id, silent.token) is None


def test_user_credentials_cannot_call_the_worker_routes() -> None:
    secret = "remote-test-secret-" + "q" * 32
    auth = AuthSettings(mode="jwt", jwt=JwtSettings(secret=secret))
    app = create_app(dataclasses.replace(actors.settings, auth=auth))
    now = int(time.time())
    claims = {"sub": "root", "roles": ["admin"], "iss": "skillq", "aud": "skillq-api"}
    admin = jwt.encode({**claims, "iat": now, "exp": now + 600}, secret, algorithm="HS256")
    routes = ["/api/v1/workers/register", f"/api/v1/jobs/{uuid.uuid4()}/complete"]
    with TestClient(app, base_url=LOCAL_URL) as client:
        for path in routes:
            as_admin = client.post(path, json={}, headers={"Authorization": f"Bearer {admin}"})
            assert as_admin.status_code == 403, as_admin.text
            assert client.post(path, json={}).status_code == 401
            forged = client.post(path, json={}, headers={"Authorization": "Bearer skqw_x"})
            assert forged.status_code == 401
