"""Dramatiq's RabbitMQ broker, with delay queues looked at often enough for delayed jobs to
start on time, and no more often.

Dramatiq's worker holds a delayed message (unacknowledged) in memory and moves it to its
queue only when the delay queue's consumer returns, which an idle consumer does once per
`worker_timeout` (1 s): a due job could start up to a second late. A delay queue's consumer
here returns when the earliest eta among the messages it handed to the worker (and that are
not yet moved) comes, else after the usual `worker_timeout`. RabbitMQ pushes a new delayed
message to the consumer at once, so nothing is missed while it blocks; the wake-up at an eta
is local (pika's inactivity timeout), with no traffic to RabbitMQ.

It used to return every 100 ms whatever it held: ten wake-ups a second per queue, six queues,
most of an idle worker's CPU (1.6 % of a core of its 2.7 %, bench/sqlite_idle.py).

How long RabbitMQ holds a delayed message safely: as long as the worker holding it lives,
except that RabbitMQ closes a channel whose delivery stays unacknowledged past its
`consumer_timeout` (30 min by default in 3.10; `rabbitmqctl eval
'application:get_env(rabbit, consumer_timeout).'`). Then the delayed messages of that
channel go back to the delay queue (none is lost) and dramatiq reopens the consumer 3 s
later and takes them again, every `consumer_timeout`; a job due in those 3 s starts up to
3 s late. Raise `consumer_timeout` above `[jobs] max_delay_hours` to avoid the churn.
"""

from __future__ import annotations

from dramatiq.broker import Consumer, MessageProxy
from dramatiq.brokers.rabbitmq import RabbitmqBroker, _RabbitmqConsumer
from dramatiq.common import current_millis

from skillq.brokers.middleware_hooks import OverriddenHooks
from skillq.brokers.rabbitmq_batches import TransactionalBatches

#: Shortest wait (milliseconds) of a delay-queue consumer holding a message that is due.
MIN_DELAY_POLL_MS = 10


class DelayPromptRabbitmqBroker(OverriddenHooks, TransactionalBatches, RabbitmqBroker):
    """`RabbitmqBroker` whose delay-queue consumers return when a message they hold is due,
    and whose batches of confirmed sends commit in one transaction (`TransactionalBatches`)."""

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Consumer:
        if not queue_name.endswith(".DQ"):
            return super().consume(queue_name, prefetch=prefetch, timeout=timeout)
        self.declare_queue(queue_name, ensure=True)
        return _DelayQueueConsumer(self, queue_name, prefetch, timeout)


class _DelayQueueConsumer(_RabbitmqConsumer):
    """Dramatiq's consumer, whose wait never outlasts the earliest eta among the messages it
    handed to the worker and that are not yet acknowledged (moved to their queue)."""

    def __init__(
        self, broker: RabbitmqBroker, queue_name: str, prefetch: int, timeout: int
    ) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)
        self.max_timeout = timeout
        self.wait_ms = timeout  # the inactivity timeout of the current `iterator`
        self._etas: dict[int, int] = {}  # delivery tag -> eta (epoch ms)

    def __next__(self) -> MessageProxy | None:
        wait = self._idle_cap()
        if wait != self.wait_ms:
            # pika keeps the consumer per channel: a new generator over the same consumer
            # (same queue and flags) only waits with another inactivity timeout.
            self.iterator = self.channel.consume(self.queue_name, inactivity_timeout=wait / 1000)
            self.wait_ms = wait
        message = super().__next__()
        if message is not None:
            eta = message.options.get("eta")
            self._etas[message._tag] = eta if isinstance(eta, int) else 0
        return message

    def _idle_cap(self) -> int:
        if not self._etas:
            return self.max_timeout
        wait = min(self._etas.values()) - current_millis()
        return int(min(self.max_timeout, max(wait, MIN_DELAY_POLL_MS)))

    def ack(self, message: MessageProxy) -> None:
        self._etas.pop(message._tag, None)
        super().ack(message)

    def nack(self, message: MessageProxy) -> None:
        self._etas.pop(message._tag, None)
        super().nack(message)
