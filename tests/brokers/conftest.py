"""The Redis broker the Redis consumer tests share (modules with a `broker` of their own
override it)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

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
