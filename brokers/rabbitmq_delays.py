"""Dramatiq's RabbitMQ broker, with delay queues looked at often enough for delayed jobs to
start on time.

Dramatiq's worker holds a delayed message (unacknowledged) in memory and moves it to its
queue only when the delay queue's consumer returns, which an idle consumer does once per
`worker_timeout` (1 s): a due job could start up to a second late. A delay queue's consumer
here returns every `DELAY_POLL_MS` instead; that wake-up is local (pika's inactivity
timeout), with no traffic to RabbitMQ.

How long RabbitMQ holds a delayed message safely: as long as the worker holding it lives,
except that RabbitMQ closes a channel whose delivery stays unacknowledged past its
`consumer_timeout` (30 min by default in 3.10; `rabbitmqctl eval
'application:get_env(rabbit, consumer_timeout).'`). Then the delayed messages of that
channel go back to the delay queue (none is lost) and dramatiq reopens the consumer 3 s
later and takes them again, every `consumer_timeout`; a job due in those 3 s starts up to
3 s late. Raise `consumer_timeout` above `[jobs] max_delay_hours` to avoid the churn.
"""

from __future__ import annotations

from dramatiq.broker import Consumer
from dramatiq.brokers.rabbitmq import RabbitmqBroker

#: How often (milliseconds) an idle delay-queue consumer hands control back to the worker.
DELAY_POLL_MS = 100


class DelayPromptRabbitmqBroker(RabbitmqBroker):
    """`RabbitmqBroker` whose delay-queue consumers return at least every `DELAY_POLL_MS`."""

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Consumer:
        if queue_name.endswith(".DQ"):
            timeout = min(timeout, DELAY_POLL_MS)
        return super().consume(queue_name, prefetch=prefetch, timeout=timeout)
