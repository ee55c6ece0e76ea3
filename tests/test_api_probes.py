"""`/ready` asks the broker with its own protocol: real API processes on Redis and RabbitMQ,
reachable and not (a free port nobody listens on), while `/live` and `/health` (store
only) keep answering; and the probes answer while the job routes hold every thread they get.
"""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import peewee
import pytest
from playhouse.pool import MaxConnectionsExceeded
from starlette.testclient import TestClient

from skillq import actors
from skillq.api.app import create_app, request_threads
from skillq.storage.database import open_database
from tests.support import (
    LOCAL_URL,
    RABBITMQ_URL,
    free_port,
    redis_url,
    require_service,
    start_api,
    write_settings,
)

REDIS_DB_URL = redis_url(11)


@pytest.mark.parametrize(
    ("backend", "url", "reachable"),
    [
        ("redis", REDIS_DB_URL, True),
        ("redis", "redis://127.0.0.1:{port}/0", False),
        ("rabbitmq", RABBITMQ_URL, True),
        ("rabbitmq", "amqp://guest:guest@127.0.0.1:{port}/%2F", False),
    ],
    ids=["redis-up", "redis-down", "rabbitmq-up", "rabbitmq-down"],
)
def test_ready_follows_the_broker(tmp_path, backend: str, url: str, reachable: bool) -> None:
    if reachable:
        require_service(backend)
    settings = write_settings(
        tmp_path,
        {
            "server": {"data_dir": str(tmp_path / "data")},
            "broker": {"backend": backend, "url": url.format(port=free_port())},
        },
    )
    api, base = start_api(settings, tmp_path)
    try:
        ready = httpx.get(f"{base}/ready", timeout=10)
        assert ready.status_code == (200 if reachable else 503), ready.text
        assert ready.json()["broker"] == {"backend": backend, "ok": reachable}
        assert ready.json()["store"]["ok"] is True
        assert httpx.get(f"{base}/live").status_code == 200
        assert httpx.get(f"{base}/health").status_code == 200
    finally:
        api.stop()


def test_probes_answer_while_the_job_routes_hold_every_request_thread() -> None:
    """The store's pool bounds the threads requests get (pool_size - 2); the probes keep
    threads of their own, so saturated job routes never make the process look dead."""
    storage = dataclasses.replace(actors.settings.storage, pool_size=3)
    settings = dataclasses.replace(actors.settings, storage=storage)
    assert request_threads(settings) == 1
    app = create_app(settings)
    release, entered = threading.Event(), threading.Event()
    list_jobs = app.state.coordinator.list_jobs

    def slow_list_jobs(**filters):
        entered.set()
        release.wait(30)
        return list_jobs(**filters)

    app.state.coordinator.list_jobs = slow_list_jobs
    with TestClient(app, base_url=LOCAL_URL) as client, ThreadPoolExecutor(2) as pool:
        try:
            first = pool.submit(client.get, "/api/v1/jobs")
            assert entered.wait(10)
            queued = pool.submit(client.get, "/api/v1/stats")
            for path in ("/health", "/ready", "/live", "/version"):
                assert client.get(path).status_code == 200, path
            # The job routes really were saturated: the second request waited for a thread.
            assert not queued.done()
        finally:
            release.set()
        assert first.result(10).status_code == 200
        assert queued.result(10).status_code == 200


def test_the_sqlite_pool_holds_at_most_pool_size_connections(tmp_path) -> None:
    database = open_database("sqlite", path=tmp_path / "jobs.db", pool_size=2)
    database._wait_timeout = 0.2  # the test's patience, not the pool's default
    holding, release = threading.Barrier(3), threading.Event()

    def hold() -> None:
        with database.connection_context():
            holding.wait(10)
            release.wait(10)

    holders = [threading.Thread(target=hold) for _ in range(2)]
    for thread in holders:
        thread.start()
    holding.wait(10)
    try:
        try:
            database.connect()
        except (MaxConnectionsExceeded, peewee.OperationalError) as error:
            refused = error
        else:
            refused = None
            database.close()
        assert isinstance(refused, MaxConnectionsExceeded)
    finally:
        release.set()
        for thread in holders:
            thread.join(10)
    with database.connection_context():  # returned connections are reused
        database.execute_sql("SELECT 1")
