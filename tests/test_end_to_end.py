"""A job submitted over HTTP runs in a real worker process and its state is read back from
the store, on every broker (SQLite, Redis, RabbitMQ) and every store (SQLite, PostgreSQL).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support import (
    RABBITMQ_URL,
    REDIS_URL,
    ChildProcess,
    create_postgres_schema,
    drop_postgres_schema,
    postgres_schema_url,
    require_service,
    start_api,
    start_worker,
    wait_for,
    write_settings,
)

COMBINATIONS = [
    ("sqlite", "sqlite"),
    ("redis", "sqlite"),
    ("rabbitmq", "sqlite"),
    ("sqlite", "postgres"),
    ("redis", "postgres"),
    ("rabbitmq", "postgres"),
]
MAX_RETRIES = 2
TIME_LIMIT_SECS = 2


@dataclass
class System:
    broker: str
    store: str
    settings_path: Path
    log_dir: Path
    client: httpx.Client
    worker: ChildProcess | None = None

    def start_worker(self, threads: int = 4) -> None:
        self.stop_worker()
        self.worker = start_worker(self.settings_path, self.log_dir, threads=threads)

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None


def _purge_broker(broker: str) -> None:
    """Queues outlive a test run on the servers; start every run from empty queues."""
    if broker == "redis":
        import redis

        redis.Redis.from_url(REDIS_URL).flushdb()
    elif broker == "rabbitmq":
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        from skillq.brokers.factory import MAX_PRIORITY

        rabbit = RabbitmqBroker(url=RABBITMQ_URL, max_priority=MAX_PRIORITY)
        for queue in ("default", "maintenance"):
            rabbit.declare_queue(queue)
        rabbit.flush_all()
        rabbit.close()


@pytest.fixture(scope="module", params=COMBINATIONS, ids=lambda c: f"{c[0]}-broker-{c[1]}-store")
def system(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    broker, store = request.param
    for service in {broker, store} - {"sqlite"}:
        require_service(service)
    directory = tmp_path_factory.mktemp(f"{broker}-{store}")
    sections: dict[str, dict] = {
        "server": {"data_dir": str(directory / "data")},
        "broker": {"backend": broker, "lease_secs": 5},
        "storage": {"backend": store},
        "workers": {
            "max_retries": MAX_RETRIES,
            "retry_delay_secs": 0,
            "job_timeout_secs": TIME_LIMIT_SECS,
        },
    }
    if broker != "sqlite":
        sections["broker"]["url"] = REDIS_URL if broker == "redis" else RABBITMQ_URL
    schema = None
    if store == "postgres":
        schema = create_postgres_schema()
        sections["storage"]["url"] = postgres_schema_url(schema)
    _purge_broker(broker)
    settings_path = write_settings(directory, sections)
    api, base_url = start_api(settings_path, directory)
    client = httpx.Client(base_url=base_url, timeout=10)
    running = System(broker, store, settings_path, directory, client)
    try:
        running.start_worker()
        yield running
    finally:
        running.stop_worker()
        client.close()
        api.stop()
        if schema:
            drop_postgres_schema(schema)


def submit(system: System, body: dict) -> dict:
    response = system.client.post("/api/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def fetch(system: System, job_id: str) -> dict:
    response = system.client.get(f"/api/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def wait_terminal(system: System, job_id: str, timeout: float = 60) -> dict:
    def terminal() -> dict | None:
        job = fetch(system, job_id)
        return job if job["state"] in ("completed", "failed", "cancelled") else None

    try:
        return wait_for(terminal, timeout=timeout, what=f"job {job_id} to finish")
    except AssertionError:
        # A worker that stopped making progress: what it logged, and where its threads are.
        print(system.worker.log() if system.worker else "no worker")
        print(system.worker.stacks() if system.worker else "")
        raise


def test_submitted_job_runs_and_completes_with_its_result(system: System) -> None:
    job = submit(
        system, {"type": "sleep", "params": {"seconds": 1.2, "steps": 4, "echo": {"n": 7}}}
    )
    assert job["state"] == "pending"
    assert job["owner"] == "local"

    running = wait_for(
        lambda: (j := fetch(system, job["id"]))["state"] == "running" and j, what="running"
    )
    assert running["worker_id"]
    assert running["started_at"]

    done = wait_terminal(system, job["id"])
    assert done["state"] == "completed"
    assert done["result"]["echo"] == {"n": 7}
    assert done["result"]["steps"] == 4
    assert done["progress"] == 1.0
    assert done["message"] == "slept 4 of 4 steps"
    assert done["attempts"] == 1
    assert done["error"] is None
    assert done["duration_ms"] >= 1000
    assert done["completed_at"] >= done["started_at"] >= done["created_at"]


def test_failing_job_is_retried_then_failed_with_its_error(system: System) -> None:
    job = submit(system, {"type": "sleep", "params": {"seconds": 0, "steps": 1, "fail": True}})
    done = wait_terminal(system, job["id"])
    assert done["state"] == "failed"
    assert done["attempts"] == MAX_RETRIES + 1
    assert done["error"]["type"] == "RuntimeError"
    assert "told to fail" in done["error"]["message"]
    assert done["result"] is None


def test_job_over_its_time_limit_fails_without_retry(system: System) -> None:
    job = submit(system, {"type": "sleep", "params": {"seconds": 30, "steps": 300}})
    done = wait_terminal(system, job["id"])
    assert done["state"] == "failed"
    assert done["error"]["type"] == "TimeLimitExceeded"
    assert f"{TIME_LIMIT_SECS} s" in done["error"]["message"]
    assert done["attempts"] == 1
    assert 0 < done["progress"] < 1


def _run_queued_on_one_thread(system: System, bodies: list[dict]) -> list[str]:
    """Queue every job while no worker runs, then let one thread run them; returns job ids
    in the order they started."""
    system.stop_worker()
    ids = [submit(system, body)["id"] for body in bodies]
    system.start_worker(threads=1)
    jobs = [wait_terminal(system, job_id) for job_id in ids]
    assert all(job["state"] == "completed" for job in jobs)
    system.start_worker()
    return [job["id"] for job in sorted(jobs, key=lambda job: job["started_at"])]


def test_equal_priority_jobs_run_in_submission_order(system: System) -> None:
    bodies = [
        {"type": "sleep", "params": {"seconds": 0.02, "steps": 1, "echo": i}} for i in range(8)
    ]
    started = _run_queued_on_one_thread(system, bodies)
    echoes = [fetch(system, job_id)["result"]["echo"] for job_id in started]
    assert echoes == list(range(8))


def test_higher_priority_runs_first_then_fifo(system: System) -> None:
    priorities = ["low", 5, "high", 5, "low", "high", 9, 0]
    bodies = [
        {"type": "sleep", "params": {"seconds": 0.02, "steps": 1, "echo": i}, "priority": p}
        for i, p in enumerate(priorities)
    ]
    started = _run_queued_on_one_thread(system, bodies)
    echoes = [fetch(system, job_id)["result"]["echo"] for job_id in started]
    numeric = [{"low": 2, "high": 8}.get(p, p) for p in priorities]
    expected = sorted(range(len(priorities)), key=lambda i: (-numeric[i], i))
    assert echoes == expected


def _job_total(system: System) -> int:
    return system.client.get("/api/v1/jobs").json()["total"]


@pytest.mark.parametrize(
    ("body", "status", "code", "path"),
    [
        (b'{"type": "sleep", ', 400, "invalid_request", "body"),
        (b"[1, 2]", 422, "invalid_params", "body"),
        (b'{"type": "no_such_type"}', 422, "unknown_job_type", "body.type"),
        (b'{"type": "sleep", "params": {"seconds": -1}}', 422, "invalid_params", "params.seconds"),
        (b'{"type": "sleep", "params": {"secs": 1}}', 422, "invalid_params", "params"),
        (b'{"type": "sleep", "params": [1]}', 422, "invalid_params", "body.params"),
        (b'{"type": "sleep", "priority": 11}', 422, "invalid_params", "body.priority"),
        (b'{"type": "sleep", "ttl_hours": 1000}', 422, "invalid_params", "body.ttl_hours"),
        (b'{"type": "sleep", "colour": "red"}', 422, "invalid_params", "body"),
    ],
)
def test_bad_submission_is_refused_with_details_and_writes_nothing(
    system: System, body: bytes, status: int, code: str, path: str
) -> None:
    before = _job_total(system)
    response = system.client.post(
        "/api/v1/jobs", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert path in [detail["path"] for detail in error["details"]]
    assert _job_total(system) == before
