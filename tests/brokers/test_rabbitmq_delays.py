"""Our RabbitMQ broker's delay-queue consumers wait as long as they may, and no longer."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import dramatiq
import pytest

from skillq.brokers.rabbitmq_delays import DelayPromptRabbitmqBroker
from tests.support import RABBITMQ_URL, require_service, wait_for

HOUR_MS = 3_600_000


@pytest.fixture
def broker() -> Iterator[DelayPromptRabbitmqBroker]:
    require_service("rabbitmq")
    broker = DelayPromptRabbitmqBroker(url=RABBITMQ_URL, middleware=[])
    yield broker
    for queue in list(broker.queues):
        for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
            broker.channel.queue_delete(name)
    broker.close()


def queue_name() -> str:
    return f"skillq-test-{uuid.uuid4().hex[:8]}"


def next_in_thread(consumer: object) -> tuple[threading.Thread, list[object]]:
    returned: list[object] = []
    thread = threading.Thread(target=lambda: returned.append(next(consumer)), daemon=True)
    thread.start()
    return thread, returned


def test_a_delay_consumer_returns_when_a_message_it_holds_comes_due(broker) -> None:
    """It blocks for the worker's whole timeout (here an hour) only while it holds nothing:
    the worker moves a held message to its queue when the consumer returns, so it returns at
    the message's eta."""
    queue = queue_name()
    broker.declare_queue(queue)
    consumer = broker.consume(f"{queue}.DQ", prefetch=10, timeout=HOUR_MS)
    try:
        message = dramatiq.Message(queue, "noop", (), {}, {})
        broker.enqueue(message, delay=300)
        held = wait_for(lambda: next(consumer), timeout=20, what="the delayed message")
        assert held.message_id == message.message_id

        thread, returned = next_in_thread(consumer)
        thread.join(20)
        assert returned == [None]

        consumer.ack(held)  # moved: nothing held any more
        assert consumer._idle_cap() == HOUR_MS
    finally:
        consumer.close()


def test_a_delay_consumer_blocking_long_takes_a_new_delayed_message_at_once(broker) -> None:
    """RabbitMQ pushes a delayed message to the consumer blocked in its wait."""
    queue = queue_name()
    broker.declare_queue(queue)
    consumer = broker.consume(f"{queue}.DQ", prefetch=10, timeout=HOUR_MS)
    try:
        thread, returned = next_in_thread(consumer)
        message = dramatiq.Message(queue, "noop", (), {}, {})
        broker.enqueue(message, delay=60_000)
        thread.join(20)
        assert [m.message_id for m in returned] == [message.message_id]
        consumer.ack(returned[0])
    finally:
        consumer.close()


def test_a_worker_runs_delayed_messages(broker) -> None:
    queue = queue_name()
    ran: list[int] = []

    @dramatiq.actor(broker=broker, queue_name=queue, actor_name=f"record_{queue}")
    def record(i: int) -> None:
        ran.append(i)

    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=1000)
    worker.start()
    try:
        record.send_with_options(args=(2,), delay=400)
        record.send_with_options(args=(1,), delay=100)
        wait_for(lambda: len(ran) == 2, timeout=20, what="both delayed messages")
    finally:
        worker.stop()
    assert ran == [1, 2]
