"""Our Redis broker honours message priority, and keeps dramatiq's Redis guarantees."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker

from skillq.brokers.redis_priority import PriorityRedisBroker
from tests.support import redis_url, require_service, wait_for

REDIS_URL = redis_url(9)


def make_broker(cls: type[RedisBroker], namespace: str, **kwargs: object) -> RedisBroker:
    return cls(url=REDIS_URL, namespace=namespace, **kwargs)


@pytest.fixture
def namespace() -> Iterator[str]:
    require_service("redis")
    name = f"skillq-test-{uuid.uuid4().hex[:8]}"
    yield name
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{name}:*"))
    if keys:
        client.delete(*keys)


@pytest.mark.parametrize(
    "cls",
    [
        PriorityRedisBroker,
        pytest.param(
            RedisBroker,
            marks=pytest.mark.xfail(strict=True, reason="dramatiq's Redis broker is FIFO only"),
        ),
    ],
)
def test_one_thread_runs_higher_priority_first_then_fifo(
    cls: type[RedisBroker], namespace: str
) -> None:
    broker = make_broker(cls, namespace)
    ran: list[int] = []

    @dramatiq.actor(broker=broker, queue_name="q", actor_name="record")
    def record(i: int) -> None:
        ran.append(i)

    priorities = [2, 5, 8, 5, 2, 8, 10, 0]
    for i, priority in enumerate(priorities):
        record.send_with_options(args=(i,), broker_priority=priority)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        wait_for(lambda: len(ran) == len(priorities), timeout=20, what="every message")
    finally:
        worker.stop()
    assert ran == sorted(range(len(priorities)), key=lambda i: (-priorities[i], i))


def test_a_retried_priority_message_comes_back_from_its_delay_queue(namespace: str) -> None:
    retries = dramatiq.middleware.Retries(min_backoff=10, max_backoff=20)
    broker = make_broker(PriorityRedisBroker, namespace, middleware=[retries])
    calls: list[int] = []

    @dramatiq.actor(broker=broker, queue_name="q", actor_name="flaky", max_retries=2)
    def flaky() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("not yet")

    flaky.send_with_options(broker_priority=9)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        wait_for(lambda: len(calls) == 3, timeout=20, what="three attempts")
        broker.join("q", timeout=10_000)
    finally:
        worker.stop()
    assert len(calls) == 3


def test_a_dead_consumers_message_on_a_level_is_requeued(namespace: str) -> None:
    dead = make_broker(PriorityRedisBroker, namespace, heartbeat_timeout=500)
    dead.declare_queue("q")
    message = dramatiq.Message("q", "noop", (), {}, {"broker_priority": 8})
    dead.enqueue(message)
    consumer = dead.consume("q", prefetch=1, timeout=100)
    taken = wait_for(lambda: next(consumer), timeout=10, what="the first delivery")
    assert taken.options["redis_level"] == "q.p8"
    # The consumer's process "dies": no ack, no more heartbeats from its broker id.

    alive = make_broker(
        PriorityRedisBroker, namespace, heartbeat_timeout=500, maintenance_chance=1_000_000
    )
    again = alive.consume("q", prefetch=1, timeout=100)
    redelivered = wait_for(lambda: next(again), timeout=15, what="the redelivery")
    assert redelivered.message_id == message.message_id
    again.ack(redelivered)


def test_an_enqueue_wakes_an_idle_consumer_instead_of_waiting_out_its_poll(
    namespace: str,
) -> None:
    """A consumer that found its queue empty waits on the queue's wake-up channel: a send
    ends the wait at once, where dramatiq's consumer sleeps out its back-off (here up to
    ten minutes, far past the test's timeout)."""
    import threading

    broker = make_broker(PriorityRedisBroker, namespace)

    @dramatiq.actor(broker=broker, queue_name="q", actor_name="noop")
    def noop() -> None: ...

    consumer = broker.consume("q", prefetch=1, timeout=600_000)
    try:
        consumer.misses = 30  # long idle: the next back-off is the full timeout
        returned = threading.Event()
        thread = threading.Thread(target=lambda: (next(consumer), returned.set()), daemon=True)
        thread.start()
        wait_for(lambda: consumer.misses > 30, timeout=30, what="the consumer to go idle")
        noop.send()
        wait_for(returned.is_set, timeout=30, what="the send to wake the consumer")
        message = wait_for(lambda: next(consumer), timeout=30, what="the message")
        assert message.actor_name == "noop"
        consumer.ack(message)
    finally:
        consumer.close()


def test_an_enqueue_after_the_server_lost_its_scripts_still_queues_and_wakes(
    namespace: str,
) -> None:
    """An enqueue runs dramatiq's script by its hash, in one round trip with the wake-up; a
    server that forgot the script (a restart, SCRIPT FLUSH) must still get the message."""
    broker = make_broker(PriorityRedisBroker, namespace)

    @dramatiq.actor(broker=broker, queue_name="q", actor_name="noop")
    def noop() -> None: ...

    wake = broker.client.pubsub(ignore_subscribe_messages=True)
    wake.subscribe(broker.wake_channel("q"))
    try:
        wait_for(lambda: wake.get_message(timeout=0.1) is None, timeout=10, what="subscribed")
        broker.client.script_flush()
        sent = noop.send()
        woken = wait_for(lambda: wake.get_message(timeout=0.1), timeout=10, what="the wake-up")
        assert woken["data"] == b"1"
    finally:
        wake.close()
    consumer = broker.consume("q", prefetch=1, timeout=100)
    try:
        message = wait_for(lambda: next(consumer), timeout=10, what="the message")
        assert message.message_id == sent.message_id
        consumer.ack(message)
    finally:
        consumer.close()
