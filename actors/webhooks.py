"""`deliver_webhook`: one attempt of a stored webhook delivery, on its own `webhooks` queue.

Deliveries never share threads with jobs, and a job's completion never waits for a
receiver. The actor does not use dramatiq's retries: each delivery's attempts and back-off
are in the store (`skillq.webhooks.delivery`), where a lost message is found again.
"""

import dramatiq

from skillq.actors import broker, settings
from skillq.webhooks import delivery, events


@dramatiq.actor(
    actor_name=events.ACTOR,
    queue_name=events.QUEUE,
    max_retries=0,
    time_limit=int(delivery.lease_secs(settings.webhooks) * 1000),
)
def deliver_webhook(delivery_id: str, attempt: int) -> str:
    return delivery.deliver(broker, settings, delivery_id, attempt)
