"""`enqueue_all` on our SQLite and Redis brokers (one transaction / one pipeline): every
message arrives once, in priority order, delayed ones only when due; a script flushed from
Redis (a restart) is loaded again rather than failing the batch."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
import redis
from dramatiq.message import Message

from skillq.brokers.batch_sends import NotAllSent, enqueue_all
from skillq.brokers.redis_priority import PriorityRedisBroker
from skillq.brokers.sqlite import SQLiteBroker
from tests.brokers.test_redis_priority import REDIS_URL
from tests.support import require_service


@pytest.fixture(params=["sqlite", "redis"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dramatiq.Broker]:
    if request.param == "sqlite":
        made = SQLiteBroker(path=tmp_path / "broker.db")
        yield made
        made.close()
        return
    require_service("redis")
    namespace = f"skillq-test-{uuid.uuid4().hex[:8]}"
    yield PriorityRedisBroker(url=REDIS_URL, namespace=namespace)
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{namespace}:*"))
    if keys:
        client.delete(*keys)


def _messages(broker: dramatiq.Broker, priorities: list[int]) -> list[Message]:
    @dramatiq.actor(broker=broker, queue_name="q", actor_name="record")
    def record(i: int) -> None:
        pass

    return [
        record.message_with_options(args=(i,), broker_priority=priority)
        for i, priority in enumerate(priorities)
    ]


def _run(broker: dramatiq.Broker, timeout_ms: int = 3000) -> list[int]:
    ran: list[int] = []
    broker.actors["record"].fn = lambda i: ran.append(i)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        broker.join("q", timeout=timeout_ms)
        worker.join()
    finally:
        worker.stop()
    return ran


def test_every_message_arrives_once_highest_priority_first(broker: dramatiq.Broker) -> None:
    priorities = [2, 5, 8, 5, 2, 8]
    messages = _messages(broker, priorities)
    enqueue_all(broker, [(message, None) for message in messages])
    assert _run(broker) == [2, 5, 1, 3, 0, 4]


def test_a_delayed_message_of_a_batch_waits(broker: dramatiq.Broker) -> None:
    messages = _messages(broker, [5, 5])
    enqueue_all(broker, [(messages[0], 60_000), (messages[1], None)])
    consumer = broker.consume("q", prefetch=10, timeout=100)
    seen = [message.args[0] for message in (next(consumer) for _ in range(10)) if message]
    consumer.close()
    assert seen == [1]


def test_a_flushed_dispatch_script_is_loaded_again(tmp_path: Path) -> None:
    require_service("redis")
    namespace = f"skillq-test-{uuid.uuid4().hex[:8]}"
    broker = PriorityRedisBroker(url=REDIS_URL, namespace=namespace)
    try:
        broker.client.script_flush()
        enqueue_all(broker, [(message, None) for message in _messages(broker, [5, 8])])
        assert sorted(_run(broker)) == [0, 1]
    finally:
        keys = list(broker.client.scan_iter(f"{namespace}:*"))
        if keys:
            broker.client.delete(*keys)


def test_an_unreachable_redis_names_every_message_unsent() -> None:
    broker = PriorityRedisBroker(url="redis://127.0.0.1:1/0")
    messages = _messages(broker, [5, 5, 5])
    with pytest.raises(NotAllSent) as failure:
        enqueue_all(broker, [(message, None) for message in messages])
    assert failure.value.unsent == [0, 1, 2]
