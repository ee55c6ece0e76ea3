"""Dramatiq's own broker-generic tests, with our brokers as their `stub_broker`.

Dramatiq's sdist carries its `tests/` but not their conftest or `common` module. `run` (next
to this file; `.ci/run` calls it) extracts the sdist's tests into a folder of their own, puts
this conftest and our `common.py` beside them, and runs the modules that take a broker as a
fixture. The tests run unchanged: our brokers behave as `StubBroker` where those tests look
(`join(queue, fail_fast=...)`, `dead_letters`, `flush_all`), with `fail_fast_default=True`
as `StubBroker`'s default.

`SKILLQ_SUITE_BROKERS` picks the brokers (default `sqlite,redis`); every test runs once per
broker. Redis keys live under a namespace of their own per test and are deleted afterwards
(other suites share the server: never FLUSHALL).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
import redis
from dramatiq import Worker
from dramatiq.rate_limits import backends as rate_limit_backends
from dramatiq.results import backends as result_backends

from skillq.brokers.redis_priority import PriorityRedisBroker
from skillq.brokers.sqlite import SQLiteBroker

REDIS_URL = os.environ.get("SKILLQ_SUITE_REDIS_URL", "redis://127.0.0.1:6379/9")
BROKERS = os.environ.get("SKILLQ_SUITE_BROKERS", "sqlite,redis").split(",")


@pytest.fixture
def redis_namespace() -> Iterator[str]:
    namespace = f"skillq-dramatiq-suite-{uuid.uuid4().hex[:8]}"
    yield namespace
    if "redis" not in BROKERS:  # nothing was written, and the server may not be there
        return
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{namespace}*"))
    if keys:
        client.delete(*keys)
    client.close()


def make_broker(kind: str, directory: Path, namespace: str) -> dramatiq.Broker:
    if kind == "sqlite":
        return SQLiteBroker(path=directory / "broker.db", fail_fast_default=True)
    if kind == "redis":
        broker = PriorityRedisBroker(url=REDIS_URL, namespace=namespace, fail_fast_default=True)
        broker.client.ping()
        return broker
    raise pytest.UsageError(f"SKILLQ_SUITE_BROKERS: unknown broker {kind!r}")


@pytest.fixture(params=BROKERS)
def stub_broker(
    request: pytest.FixtureRequest, tmp_path: Path, redis_namespace: str
) -> Iterator[dramatiq.Broker]:
    broker = make_broker(request.param, tmp_path, redis_namespace)
    broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    yield broker
    broker.flush_all()
    broker.close()


@pytest.fixture
def stub_worker(stub_broker: dramatiq.Broker) -> Iterator[Worker]:
    worker = Worker(stub_broker, worker_timeout=100, worker_threads=32)
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def redis_result_backend(redis_namespace: str) -> result_backends.RedisBackend:
    return result_backends.RedisBackend(namespace=f"{redis_namespace}-results", url=REDIS_URL)


@pytest.fixture(params=["stub", "redis"] if "redis" in BROKERS else ["stub"])
def result_backend(
    request: pytest.FixtureRequest, redis_namespace: str
) -> result_backends.ResultBackend:
    """Dramatiq's stub and Redis result backends (no memcached on our machines; no Redis
    when the suite runs on SQLite alone)."""
    if request.param == "redis":
        return result_backends.RedisBackend(namespace=f"{redis_namespace}-results", url=REDIS_URL)
    return result_backends.StubBackend()


@pytest.fixture
def rate_limiter_backend() -> rate_limit_backends.StubBackend:
    """The stub only: Dramatiq's Redis rate limiter writes keys outside any namespace."""
    return rate_limit_backends.StubBackend()
