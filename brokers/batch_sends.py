"""Sending many messages at once (a batch submit): one round trip or one transaction where
the broker allows it, else one `enqueue` after another.

A broker with an `enqueue_many(items)` method (SQLite: one transaction; Redis: one pipeline;
RabbitMQ: one AMQP transaction when sends are confirmed, `brokers.rabbitmq_batches`) sends
through it; any other (the stub) gets a loop of plain enqueues. Either way
a failure says which messages may not have been sent (`NotAllSent.unsent`), so the caller
can fail exactly those jobs: a message that did reach the broker but is counted unsent finds
its job failed and does not run it (`brokers.job_status`).
"""

from __future__ import annotations

import dramatiq
from dramatiq.message import Message

#: (message, delay in milliseconds or None), as `Broker.enqueue` takes them.
Send = tuple[Message, int | None]


class NotAllSent(Exception):
    """Sending a batch failed: `unsent` holds the indexes of the messages that may not have
    reached the broker (every index not surely sent); `error` the broker's error."""

    def __init__(self, unsent: list[int], error: BaseException) -> None:
        super().__init__(f"{len(unsent)} messages not sent: {error}")
        self.unsent = unsent
        self.error = error


def enqueue_all(broker: dramatiq.Broker, items: list[Send]) -> None:
    """Send every message; raises `NotAllSent` if some may not have been sent."""
    many = getattr(broker, "enqueue_many", None)
    if many is not None:
        many(items)
        return
    enqueue_each(broker, items)


def enqueue_each(broker: dramatiq.Broker, items: list[Send]) -> None:
    """One plain `enqueue` after another; raises `NotAllSent` from the first that fails."""
    for index, (message, delay) in enumerate(items):
        try:
            broker.enqueue(message, delay=delay)
        except Exception as error:
            raise NotAllSent(list(range(index, len(items))), error) from error
