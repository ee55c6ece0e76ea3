"""Batch submit (issue 15): `JobCoordinator.submit_jobs` on SQLite and PostgreSQL, and
`POST /api/v1/jobs:batch` in process; a batch run to completion on each broker is in
tests/test_batch_runs.py.

All or nothing: a bad item, a quota or a reused key refuses the whole batch and writes
nothing; a broker refusing the sends fails exactly the jobs it may not have queued.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Iterator

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from starlette.testclient import TestClient

from skillq import actors
from skillq.actors.diagnostics import SLEEP_PARAMS
from skillq.api.app import create_app
from skillq.brokers.factory import job_middleware
from skillq.brokers.job_status import JOB_ID_OPTION
from skillq.brokers.redis_priority import PriorityRedisBroker
from skillq.errors import (
    Forbidden,
    IdempotencyKeyReused,
    InvalidParams,
    QuotaExceeded,
    ServiceUnavailable,
)
from skillq.jobs.coordinator import JobCoordinator
from skillq.jobs.types import JobTypeOptions
from skillq.settings import QuotaSettings, StorageSettings
from skillq.storage import JobState, jobs, owner_counts
from skillq.storage.database import connection
from tests.support import LOCAL_URL, store_outage


def _settings(**jobs_settings: object):
    settings = actors.settings
    return dataclasses.replace(settings, jobs=dataclasses.replace(settings.jobs, **jobs_settings))


def _sleep(**body: object) -> dict:
    return {"type": "sleep", "params": {"seconds": 0}, **body}


def _total(owner: str | None = None) -> int:
    with connection():
        return jobs.list_jobs(owner=owner, limit=1).total


def _delivered(broker: dramatiq.Broker, queue: str = "default") -> list[str]:
    """The job ids of every message due on `queue`, each taken and acked.

    Reads until two reads in a row find nothing (each waits its 100 ms): the sends were
    committed before the submit returned, so nothing due is still on its way. Thirty reads
    whatever came cost 3 s a call."""
    consumer = broker.consume(queue, prefetch=100, timeout=100)
    ids: list[str] = []
    empty = 0
    while empty < 2:
        message = next(consumer)
        if message is None:
            empty += 1
            continue
        empty = 0
        ids.append(message.options[JOB_ID_OPTION])
        consumer.ack(message)
    consumer.close()
    return ids


def test_a_batch_writes_every_job_in_order_and_sends_each(store: StorageSettings) -> None:
    actors.broker.flush_all()
    coordinator = JobCoordinator(actors.broker, actors.settings)
    owner = f"batch-{uuid.uuid4().hex[:6]}"
    requests = [_sleep(priority=p) for p in ("low", "normal", "high", 3, 7)]
    submissions = coordinator.submit_jobs(requests, owner=owner)
    assert [s.created for s in submissions] == [True] * 5
    assert [s.job.priority for s in submissions] == [2, 5, 8, 3, 7]
    ids = [s.job.id for s in submissions]
    for job_id in ids:
        job = coordinator.get_job(job_id, owner=owner)
        assert (job.state, job.owner, job.type) == (JobState.PENDING, owner, "sleep")
    assert sorted(_delivered(actors.broker)) == sorted(ids)
    # FIFO within a batch: each job is created after the one before it.
    created = [coordinator.get_job(job_id).created_at for job_id in ids]
    assert created == sorted(created)


def test_delayed_and_dependent_items_follow_the_single_submit_rules(
    store: StorageSettings,
) -> None:
    actors.broker.flush_all()
    coordinator = JobCoordinator(actors.broker, actors.settings)
    first = coordinator.submit_job(_sleep()).job
    later, waiting = coordinator.submit_jobs(
        [_sleep(delay_secs=3600), _sleep(depends_on=[first.id])]
    )
    assert later.job.scheduled_for is not None
    assert coordinator.position_in_queue(later.job) is None
    assert waiting.job.waiting and waiting.job.waiting_for == [first.id]
    # Only the first job's message is due: the delayed one waits, the dependent one is held.
    assert _delivered(actors.broker) == [first.id]


def test_callback_urls_are_watched_in_the_batchs_transaction(store: StorageSettings) -> None:
    from skillq.settings import WebhookSettings
    from skillq.storage import webhooks

    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8GKYo="
    hooks = WebhookSettings(secret=secret, allow_private=True)
    settings = dataclasses.replace(actors.settings, webhooks=hooks)
    coordinator = JobCoordinator(actors.broker, settings)
    url = "http://127.0.0.1:9/hook"
    watched, plain = coordinator.submit_jobs([_sleep(callback_url=url), _sleep()])
    with connection():
        assert webhooks.watched(watched.job.id).callback_url == url
        assert webhooks.watched(plain.job.id) is None


def test_one_bad_item_refuses_the_batch_naming_every_bad_index(store: StorageSettings) -> None:
    coordinator = JobCoordinator(actors.broker, actors.settings)
    before = _total()
    requests = [
        _sleep(),
        {"type": "sleep", "params": {"seconds": "long"}},
        {"type": "no_such_type"},
        _sleep(),
        _sleep(priority=11),
        _sleep(depends_on=[str(uuid.uuid4())]),
        _sleep(callback_url="http://127.0.0.1:9/hook"),  # this server has no webhook secret
    ]
    assert actors.settings.webhooks.secret is None
    with pytest.raises(InvalidParams) as refused:
        coordinator.submit_jobs(requests)
    paths = [detail["path"] for detail in refused.value.details]
    assert "body.jobs[6].callback_url" in paths
    assert "body.jobs[1].params.seconds" in paths
    assert "body.jobs[2].type" in paths
    assert "body.jobs[4].priority" in paths
    assert "body.jobs[5].depends_on.0" in paths
    assert not any(path.startswith(("body.jobs[0]", "body.jobs[3]")) for path in paths)
    assert {d["code"] for d in refused.value.details} == {"invalid_params", "unknown_job_type"}
    assert "index 1, 2, 4, 5, 6" in refused.value.message
    assert _total() == before


def test_a_batch_over_the_quota_is_refused_whole(store: StorageSettings) -> None:
    settings = dataclasses.replace(actors.settings, quotas=QuotaSettings(max_pending=3))
    coordinator = JobCoordinator(actors.broker, settings)
    coordinator.submit_jobs([_sleep(), _sleep()], owner="quota")
    with pytest.raises(QuotaExceeded) as refused:
        coordinator.submit_jobs([_sleep(), _sleep()], owner="quota")
    assert "this submit adds 2" in refused.value.message
    assert refused.value.details[0]["quota"] == "quotas.max_pending"
    with connection():
        assert owner_counts.pending_count("quota") == 2
    coordinator.submit_jobs([_sleep()], owner="quota")  # exactly up to the quota
    with connection():
        assert owner_counts.pending_count("quota") == 3


def test_idempotency_keys_hold_per_item(store: StorageSettings) -> None:
    coordinator = JobCoordinator(actors.broker, actors.settings)
    a, b = uuid.uuid4().hex, uuid.uuid4().hex
    first = coordinator.submit_jobs([_sleep(idempotency_key=a), _sleep(idempotency_key=b)])
    again = coordinator.submit_jobs(
        [_sleep(idempotency_key=b), _sleep(), _sleep(idempotency_key=a)]
    )
    assert [s.created for s in again] == [False, True, False]
    assert again[0].job.id == first[1].job.id and again[2].job.id == first[0].job.id
    # The same key twice in one batch is one request sent twice: one job.
    c = uuid.uuid4().hex
    twice = coordinator.submit_jobs([_sleep(idempotency_key=c), _sleep(idempotency_key=c)])
    assert [s.created for s in twice] == [True, False]
    assert twice[0].job.id == twice[1].job.id
    before = _total()
    with pytest.raises(IdempotencyKeyReused) as refused:
        coordinator.submit_jobs([_sleep(), {"type": "sleep", "idempotency_key": a}])
    assert refused.value.details[0]["path"] == "body.jobs[1].idempotency_key"
    assert refused.value.details[0]["job_id"] == first[0].job.id
    d = uuid.uuid4().hex
    with pytest.raises(IdempotencyKeyReused, match=r"also used by body.jobs\[0\]"):
        coordinator.submit_jobs([_sleep(idempotency_key=d), _sleep(idempotency_key=d, priority=9)])
    assert _total() == before


def test_concurrent_batches_with_the_same_keys_make_each_job_once(
    store: StorageSettings,
) -> None:
    """Eight threads (each its own store connection) send one batch at once: whoever loses
    an idempotency-key race reads the winner's jobs, and answers with them."""
    coordinator = JobCoordinator(actors.broker, actors.settings)
    keys = [uuid.uuid4().hex for _ in range(3)]
    batch = [_sleep(idempotency_key=key) for key in keys]
    start = threading.Barrier(8)
    answers: list[list[str]] = []

    def submit() -> None:
        start.wait()
        answers.append([s.job.id for s in coordinator.submit_jobs(batch, owner="racer")])

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(answers) == 8 and all(answer == answers[0] for answer in answers), answers
    with connection():
        assert sorted(jobs.find_by_idempotency_keys("racer", keys)) == sorted(keys)
        assert jobs.list_jobs(owner="racer").total == 3


def test_a_batch_past_max_batch_jobs_is_422(store: StorageSettings) -> None:
    coordinator = JobCoordinator(actors.broker, _settings(max_batch_jobs=3))
    before = _total()
    with pytest.raises(InvalidParams, match="too many jobs") as refused:
        coordinator.submit_jobs([_sleep()] * 4)
    assert refused.value.details == [
        {"path": "body.jobs", "message": "4 jobs; at most 3 (jobs.max_batch_jobs)"}
    ]
    assert len(coordinator.submit_jobs([_sleep()] * 3)) == 3
    assert _total() == before + 3


def test_a_batch_cannot_name_another_owners_data(store: StorageSettings) -> None:
    coordinator = JobCoordinator(actors.broker, actors.settings)
    theirs = coordinator.submit_job(_sleep(), owner="bob").job
    index = {"type": "index_documents", "params": {"collection": "c", "documents": []}}
    own = {**index, "params": {**index["params"], "owner": "alice"}}
    other = {**index, "params": {**index["params"], "owner": "bob"}}
    before = _total()
    with pytest.raises(Forbidden) as refused:
        coordinator.submit_jobs([own, other], owner="alice")
    assert [d["path"] for d in refused.value.details] == ["body.jobs[1]"]
    assert "params.owner" in refused.value.details[0]["message"]
    # Another owner's job is "no job" to a dependency, as for a single submit.
    with pytest.raises(InvalidParams) as refused:
        coordinator.submit_jobs([_sleep(depends_on=[theirs.id])], owner="alice")
    assert refused.value.details[0]["path"] == "body.jobs[0].depends_on.0"
    assert _total() == before
    # An admin (any_owner) may.
    made = coordinator.submit_jobs([own, other], owner="alice", any_owner=True)
    assert [s.job.params["owner"] for s in made] == ["alice", "bob"]


def _broker_with_sleep(broker: dramatiq.Broker) -> dramatiq.Broker:
    dramatiq.actor(
        lambda **params: None, broker=broker, actor_name="sleep", params_schema=SLEEP_PARAMS
    )
    return broker


def test_an_unreachable_broker_fails_every_job_of_the_batch(store: StorageSettings) -> None:
    # A real Redis broker on a port where nothing listens: the pipeline raises.
    unreachable = PriorityRedisBroker(
        url="redis://127.0.0.1:1/0",
        middleware=[*job_middleware(actors.settings.workers), JobTypeOptions()],
    )
    coordinator = JobCoordinator(_broker_with_sleep(unreachable), actors.settings)
    owner = f"down-{uuid.uuid4().hex[:6]}"
    with pytest.raises(ServiceUnavailable) as refused:
        coordinator.submit_jobs([_sleep(), _sleep()], owner=owner)
    details = refused.value.details
    assert [d["message"] for d in details] == ["not queued: the job failed (EnqueueError)"] * 2
    for detail in details:
        job = coordinator.get_job(detail["job_id"])
        assert (job.state, job.error_type) == (JobState.FAILED, "EnqueueError")
    assert _total(owner) == 2


class _RefusesFromThird(StubBroker):
    """Dramatiq's in-memory broker, refusing every enqueue after the second: a broker that
    goes away in the middle of a batch sent one message at a time (as RabbitMQ's are)."""

    def enqueue(self, message, *, delay=None):
        self.sent = getattr(self, "sent", 0) + 1
        if self.sent > 2:
            raise ConnectionError("the broker went away")
        return super().enqueue(message, delay=delay)


def test_a_broker_lost_midway_fails_only_the_unsent_jobs(store: StorageSettings) -> None:
    broker = _RefusesFromThird(
        middleware=[*job_middleware(actors.settings.workers), JobTypeOptions()]
    )
    coordinator = JobCoordinator(_broker_with_sleep(broker), actors.settings)
    first = coordinator.submit_job(_sleep()).job  # the broker's first send
    with pytest.raises(ServiceUnavailable, match="2 of the batch's jobs were not queued") as lost:
        coordinator.submit_jobs([_sleep(), _sleep(depends_on=[first.id]), _sleep(), _sleep()])
    details = lost.value.details
    assert [d["path"] for d in details] == [f"body.jobs[{i}]" for i in (0, 2, 3, 1)]
    assert [d["message"] for d in details] == [
        "queued",
        "not queued: the job failed (EnqueueError)",
        "not queued: the job failed (EnqueueError)",
        "accepted: waits for its dependencies",
    ]
    jobs_ = [coordinator.get_job(d["job_id"]) for d in details]
    assert [job.state for job in jobs_] == ["pending", "failed", "failed", "pending"]
    assert jobs_[3].waiting


# REST, in process on the embedded store.


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(_settings(max_batch_jobs=5)), base_url=LOCAL_URL) as client:
        yield client


def test_rest_batch_answers_202_with_the_jobs_in_order(client: TestClient) -> None:
    key = uuid.uuid4().hex
    body = {"jobs": [_sleep(idempotency_key=key), _sleep(priority="high")]}
    response = client.post("/api/v1/jobs:batch", json=body)
    assert response.status_code == 202, response.text
    made = response.json()["jobs"]
    assert [job["priority"] for job in made] == [5, 8]
    for job in made:
        assert client.get(f"/api/v1/jobs/{job['id']}").json() == {
            **job,
            "position_in_queue": client.get(f"/api/v1/jobs/{job['id']}").json()[
                "position_in_queue"
            ],
        }
    again = client.post("/api/v1/jobs:batch", json={"jobs": [_sleep(idempotency_key=key)]})
    assert again.status_code == 200, again.text
    assert again.json()["jobs"][0]["id"] == made[0]["id"]


@pytest.mark.parametrize(
    ("body", "status", "code", "path"),
    [
        (b'{"jobs": [{"type": "sleep"}, {"type": "sleep", "params": 1}]}', 422,
         "invalid_params", "body.jobs[1].params"),
        (b'{"jobs": [{"type": "nope"}]}', 422, "unknown_job_type", "body.jobs[0].type"),
        (b'{"jobs": []}', 422, "invalid_params", "body.jobs"),
        (b'{"jobs": {"a": 1}}', 422, "invalid_params", "body.jobs"),
        (b'[{"type": "sleep"}]', 422, "invalid_params", "body"),
        (b'{"jobs": [{"type": "sleep"}], "x": 1}', 422, "invalid_params", "body"),
        (b'{"jobs": [1, {"type": "sleep"}]}', 422, "invalid_params", "body.jobs[0]"),
        (b'{"jobs": [' + b'{"type": "sleep"},' * 5 + b'{"type": "sleep"}]}', 422,
         "invalid_params", "body.jobs"),
        (b'{"jobs": [', 400, "invalid_request", None),
    ],
)  # fmt: skip
def test_rest_bad_batches_get_the_envelope_and_write_nothing(
    client: TestClient, body: bytes, status: int, code: str, path: str | None
) -> None:
    before = _total()
    response = client.post("/api/v1/jobs:batch", content=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    if path is not None:
        assert path in [detail["path"] for detail in error["details"]], error
    assert _total() == before


def test_rest_store_outage_is_503_not_500(client: TestClient) -> None:
    with store_outage():
        response = client.post("/api/v1/jobs:batch", json={"jobs": [_sleep()]})
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "service_unavailable"


def test_rest_body_over_the_limit_is_413(client: TestClient) -> None:
    limit = client.app.state.settings.server.max_body_size
    big = b'{"jobs": [{"type": "sleep", "params": {"echo": "' + b"x" * limit + b'"}}]}'
    response = client.post("/api/v1/jobs:batch", content=big)
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "payload_too_large"


def test_rest_batch_needs_the_submit_scope() -> None:
    from tests.test_auth import SECRET, app_with, bearer, token

    with app_with(secret=SECRET) as client:
        body = {"jobs": [_sleep()]}
        viewer = client.post(
            "/api/v1/jobs:batch", json=body, headers=bearer(token(roles=["viewer"]))
        )
        assert viewer.status_code == 403, viewer.text
        assert "skillq:submit" in viewer.headers["www-authenticate"]
        assert client.post("/api/v1/jobs:batch", json=body).status_code == 401
        mine = client.post("/api/v1/jobs:batch", json=body, headers=bearer(token(sub="carol")))
        assert mine.status_code == 202, mine.text
        assert mine.json()["jobs"][0]["owner"] == "carol"
