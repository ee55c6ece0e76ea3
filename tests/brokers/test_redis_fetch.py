"""A Redis consumer fetches from the highest full priority level in one script run of our own
(`PriorityRedisConsumer.fetch_first_full`) and leaves dramatiq's keys as dramatiq's fetch does:
acks and the dead-worker maintenance keep working on what it fetched, also for a consumer
that is never idle and so never beats. A fetch that empties the queue spares the next."""

from __future__ import annotations

import time

import dramatiq

from skillq.brokers.redis_priority import PriorityRedisBroker
from tests.brokers.test_redis_idle import idle_in_thread
from tests.brokers.test_redis_priority import REDIS_URL
from tests.support import wait_for


def send(broker: PriorityRedisBroker, priority: int) -> dramatiq.Message:
    return broker.enqueue(dramatiq.Message("q", "noop", (), {}, {"broker_priority": priority}))


def acks_key(broker: PriorityRedisBroker, level: str) -> str:
    return f"{broker.namespace}:__acks__.{broker.broker_id}.{level}"


def test_a_fetch_takes_up_to_its_prefetch_from_the_highest_full_level_only(broker) -> None:
    high = [send(broker, 8) for _ in range(2)]
    default = [send(broker, 5) for _ in range(2)]
    send(broker, 3)
    broker.client.script_flush()  # a server that lost the script (a restart) loads it again
    consumer = broker.consume("q", prefetch=3, timeout=100)
    try:
        first = [wait_for(lambda: next(consumer), timeout=10, what="a message") for _ in high]
        assert [m.message_id for m in first] == [m.message_id for m in high]
        # The fetch stopped at the p8 level although its prefetch had room for one more.
        assert consumer.message_cache == []
        assert broker.client.llen(f"{broker.namespace}:q") == 2
        taken = {m.options["redis_message_id"].encode() for m in first}
        assert broker.client.smembers(acks_key(broker, "q.p8")) == taken
        for message in first:
            consumer.ack(message)
        # Acked on the level it came from: nothing of the p8 messages is left behind.
        assert broker.client.exists(acks_key(broker, "q.p8"), f"{broker.namespace}:q.p8.msgs") == 0
        second = wait_for(lambda: next(consumer), timeout=10, what="a default message")
        assert second.message_id == default[0].message_id
        assert second.options["redis_level"] == "q"
    finally:
        consumer.close()


def test_a_message_whose_body_is_gone_is_skipped_not_handed_out(broker) -> None:
    """As with dramatiq's fetch: an id on the list whose body was deleted (a purge racing the
    fetch) gives no message, and the fetch goes on to the next."""
    gone, kept = send(broker, 8), send(broker, 8)
    broker.client.hdel(f"{broker.namespace}:q.p8.msgs", gone.options["redis_message_id"])
    consumer = broker.consume("q", prefetch=2, timeout=100)
    try:
        message = wait_for(lambda: next(consumer), timeout=10, what="the kept message")
        assert message.message_id == kept.message_id
        consumer.ack(message)
    finally:
        consumer.close()


def test_a_busy_fetch_that_draws_maintenance_hands_back_a_dead_workers_messages(broker) -> None:
    """A consumer that never goes idle never beats; its fetches still draw dramatiq's
    maintenance chance, which runs on the level they fetched from."""
    dying = broker.consume("q", prefetch=1, timeout=100)
    survivor = PriorityRedisBroker(
        url=REDIS_URL, namespace=broker.namespace, heartbeat_timeout=200,
        maintenance_chance=1_000_000,
    )  # fmt: skip
    busy = survivor.consume("q", prefetch=1, timeout=100)
    try:
        lost, other = send(broker, 8), send(broker, 8)
        wait_for(lambda: next(dying), timeout=10, what="the delivery to the dying worker")
        # It dies holding the message unacknowledged: it never beats or acks again.
        time.sleep(0.3)  # not a check: lets its heartbeat grow older than the survivor's 200 ms
        fetched = wait_for(lambda: next(busy), timeout=10, what="the survivor's fetch")
        assert fetched.message_id == other.message_id
        assert broker.client.lrange(f"{broker.namespace}:q.p8", 0, -1) == [
            lost.options["redis_message_id"].encode()
        ]
        busy.ack(fetched)
    finally:
        busy.close()
        dying.close()
        survivor.client.close()


def test_after_taking_the_last_message_a_consumer_waits_for_a_send_without_fetching(
    broker,
) -> None:
    """The fetch that emptied the queue says so, so the consumer spares the fetch that would
    find nothing and waits on its wake-up channel at once; a send then ends the wait and
    the next fetch takes it: nothing sent after the emptying fetch is missed."""
    fetches: list[str] = []
    first = send(broker, 5)
    consumer = broker.consume("q", prefetch=2, timeout=600_000)
    fetch_first_full = consumer.fetch_first_full

    def counted(wanted: int):
        found = fetch_first_full(wanted)
        fetches.append(found.level)
        return found

    consumer.fetch_first_full = counted
    try:
        taken = wait_for(lambda: next(consumer), timeout=10, what="the only message")
        assert taken.message_id == first.message_id
        assert fetches == ["q"]
        thread, _ = idle_in_thread(consumer)
        assert fetches == ["q"]  # it went idle without fetching
        second = send(broker, 8)
        thread.join(10)
        assert not thread.is_alive()  # the send woke it
        again = wait_for(lambda: next(consumer), timeout=10, what="the message sent after")
        assert again.message_id == second.message_id
        assert fetches == ["q", "q.p8"]
        consumer.ack(taken)
        consumer.ack(again)
    finally:
        consumer.close()
