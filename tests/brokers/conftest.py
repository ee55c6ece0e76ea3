"""The Redis broker the Redis consumer tests share (modules with a `broker` of their own
override it), and a worker that records what it ran."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import dramatiq
import pytest
import redis

from skillq.brokers.redis_priority import PriorityRedisBroker
from tests.brokers.test_redis_priority import REDIS_URL
from tests.support import require_service


@pytest.fixture
def broker() -> Iterator[PriorityRedisBroker]:
    """Our Redis broker on a namespace of its own, with one queue `q`; its keys are deleted
    afterwards."""
    require_service("redis")
    namespace = f"skillq-test-{uuid.uuid4().hex[:8]}"
    broker = PriorityRedisBroker(url=REDIS_URL, namespace=namespace)
    broker.declare_queue("q")
    yield broker
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{namespace}:*"))
    if keys:
        client.delete(*keys)


@contextmanager
def recording_worker(
    broker: dramatiq.Broker, *, threads: int
) -> Iterator[tuple[dramatiq.Actor, list[int]]]:
    """A running worker and an actor `record(i)` on queue `q` that appends `i` to the list;
    the worker must stop within 30 s on leaving."""
    ran: list[int] = []

    @dramatiq.actor(broker=broker, queue_name="q", actor_name="record")
    def record(i: int) -> None:
        ran.append(i)

    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
    worker.start()
    try:
        yield record, ran
    finally:
        stopper = threading.Thread(target=worker.stop, daemon=True)
        stopper.start()
        stopper.join(30)
        assert not stopper.is_alive(), "the worker did not stop"
