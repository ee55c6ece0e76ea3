"""A batch of confirmed sends on RabbitMQ commits in one transaction (brokers.rabbitmq_batches),
on a real server: every message lands as a single send would put it, or is named unsent."""

from __future__ import annotations

from collections.abc import Iterator

import dramatiq
import pika
import pytest

from skillq.brokers.batch_sends import NotAllSent
from skillq.brokers.rabbitmq_delays import DelayPromptRabbitmqBroker
from tests.brokers.test_rabbitmq_delays import queue_name
from tests.support import RABBITMQ_URL, require_service


class Enqueues(dramatiq.Middleware):
    def __init__(self) -> None:
        self.before: list[str] = []
        self.after: list[str] = []

    def before_enqueue(self, broker, message, delay) -> None:
        self.before.append(message.message_id)

    def after_enqueue(self, broker, message, delay) -> None:
        self.after.append(message.message_id)


@pytest.fixture(params=[True, False], ids=["confirmed", "unconfirmed"])
def broker(request: pytest.FixtureRequest) -> Iterator[DelayPromptRabbitmqBroker]:
    require_service("rabbitmq")
    broker = DelayPromptRabbitmqBroker(
        url=RABBITMQ_URL, middleware=[Enqueues()], confirm_delivery=request.param
    )
    yield broker
    for queue in list(broker.queues):
        for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
            broker.channel.queue_delete(name)
    broker.close()


@pytest.fixture
def commits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The transactions committed (pika's `tx_commit` calls), counted."""
    counted: list[int] = []
    commit = pika.adapters.blocking_connection.BlockingChannel.tx_commit

    def counting(channel):
        counted.append(1)
        return commit(channel)

    monkeypatch.setattr(pika.adapters.blocking_connection.BlockingChannel, "tx_commit", counting)
    return counted


def queued(broker: DelayPromptRabbitmqBroker, queue: str) -> list[dramatiq.Message]:
    """The messages waiting in `queue`, taken off it."""
    messages = []
    while True:
        method, _, body = broker.channel.basic_get(queue, auto_ack=True)
        if method is None:
            return messages
        messages.append(dramatiq.Message.decode(body))


def message(queue: str, n: int, priority: int | None = None) -> dramatiq.Message:
    options = {} if priority is None else {"broker_priority": priority}
    return dramatiq.Message(queue, "noop", (n,), {}, options)


def test_a_batch_lands_whole_as_single_sends_would(broker, commits) -> None:
    queue = queue_name()
    broker.declare_queue(queue)
    items = [(message(queue, n, priority=n % 3), None) for n in range(40)]
    items += [(message(queue, 100 + n), 60_000) for n in range(5)]

    broker.enqueue_many(items)

    now = queued(broker, queue)
    later = queued(broker, f"{queue}.DQ")
    assert sorted(m.args[0] for m in now) == list(range(40))
    assert sorted(m.args[0] for m in later) == [100 + n for n in range(5)]
    assert all(m.options["eta"] > 0 for m in later)
    hooks = broker.middleware[0]
    assert sorted(hooks.before) == sorted(hooks.after) == sorted(m.message_id for m, _ in items)
    # Confirmed: one transaction for the whole batch; unconfirmed: plain sends, none.
    assert len(commits) == (1 if broker.confirm_delivery else 0)


# Confirmed only: an unconfirmed send cannot see that its queue is gone (README, Brokers).
@pytest.mark.parametrize("broker", [True], indirect=True, ids=["confirmed"])
def test_a_batch_to_a_queue_deleted_on_the_server_declares_it_again(broker) -> None:
    queue = queue_name()
    broker.declare_queue(queue)
    broker.enqueue(message(queue, 0))
    broker.channel.queue_delete(queue)  # an operator, or a server that lost it

    broker.enqueue_many([(message(queue, n), None) for n in range(1, 4)])

    assert sorted(m.args[0] for m in queued(broker, queue)) == [1, 2, 3]


def test_a_batch_after_the_connection_dropped_goes_out_on_a_new_one(broker) -> None:
    queue = queue_name()
    broker.declare_queue(queue)
    broker.enqueue_many([(message(queue, 0), None)])
    broker.connection.close()  # the server closed it (a restart, a network cut)

    broker.enqueue_many([(message(queue, n), None) for n in range(1, 4)])

    assert sorted(m.args[0] for m in queued(broker, queue)) == [0, 1, 2, 3]


def test_a_batch_the_server_cannot_take_is_named_unsent_whole() -> None:
    broker = DelayPromptRabbitmqBroker(url="amqp://guest:guest@127.0.0.1:1/%2F", middleware=[])
    queue = queue_name()
    broker.declare_queue(queue)
    with pytest.raises(NotAllSent) as failure:
        broker.enqueue_many([(message(queue, n), None) for n in range(3)])
    assert failure.value.unsent == [0, 1, 2]
