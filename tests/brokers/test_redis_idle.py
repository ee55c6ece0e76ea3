"""Idle consumers of our Redis broker wait long on their wake-up channel, and every event that
needs them sooner wakes them: a send, a delayed send, a requeue, a worker stopping."""

from __future__ import annotations

import threading
import time

import dramatiq

from skillq.brokers.redis_priority import PriorityRedisBroker
from tests.brokers.redis_workers import recording_worker
from tests.brokers.test_redis_priority import REDIS_URL
from tests.support import wait_for

HOUR_MS = 3_600_000


def idle_in_thread(consumer: object) -> tuple[threading.Thread, list[object]]:
    """`next(consumer)` in a thread, once the consumer has gone idle for its longest wait."""
    consumer.misses = 30  # long idle: the next back-off is the longest wait
    returned: list[object] = []
    thread = threading.Thread(target=lambda: returned.append(next(consumer)), daemon=True)
    thread.start()
    wait_for(lambda: consumer.misses > 30 or returned, timeout=30, what="the consumer to idle")
    return thread, returned


def test_an_idle_consumer_waits_longer_than_the_worker_timeout(broker) -> None:
    """A send wakes it, so it returns by itself only to keep the heartbeat (15 s here)."""
    short = PriorityRedisBroker(url=REDIS_URL, namespace=broker.namespace, heartbeat_timeout=600)
    consumers = [
        broker.consume("q", prefetch=1, timeout=1000),
        broker.consume("q.DQ", prefetch=1, timeout=1000),
        short.consume("q", prefetch=1, timeout=100),
    ]
    try:
        assert [consumer._idle_cap() for consumer in consumers] == [5000, 5000, 200]
    finally:
        for consumer in consumers:
            consumer.close()


def test_a_delayed_send_wakes_an_idle_delay_queue_consumer(broker) -> None:
    consumer = broker.consume("q.DQ", prefetch=10, timeout=HOUR_MS)
    try:
        thread, _ = idle_in_thread(consumer)
        sent = broker.enqueue(dramatiq.Message("q", "noop", (), {}, {}), delay=60_000)
        thread.join(20)
        assert not thread.is_alive()
        held = wait_for(lambda: next(consumer), timeout=20, what="the delayed message")
        assert held.message_id == sent.message_id
        consumer.ack(held)
    finally:
        consumer.close()


def test_a_requeue_wakes_the_idle_consumers_of_the_queue(broker) -> None:
    """A stopping worker gives its prefetched messages back: another worker takes them now."""
    stopping = broker.consume("q", prefetch=1, timeout=100)
    idle = broker.consume("q", prefetch=1, timeout=HOUR_MS)
    try:
        sent = broker.enqueue(dramatiq.Message("q", "noop", (), {}, {}))
        taken = wait_for(lambda: next(stopping), timeout=20, what="the first delivery")
        thread, _ = idle_in_thread(idle)
        stopping.requeue([taken])
        thread.join(20)
        assert not thread.is_alive()
        again = wait_for(lambda: next(idle), timeout=20, what="the requeued message")
        assert again.message_id == sent.message_id
        idle.ack(again)
    finally:
        stopping.close()
        idle.close()


def test_the_first_idle_beat_after_a_dead_workers_heartbeat_expired_hands_back_its_messages(
    broker,
) -> None:
    """Its messages come back at that beat, not after a run of lucky maintenance draws (one
    in ten per beat, and an idle consumer beats every 5 s): a SIGKILLed worker's jobs used to
    wait 50 s on average, minutes now and then."""
    survivor = PriorityRedisBroker(url=REDIS_URL, namespace=broker.namespace, heartbeat_timeout=200)
    dying = broker.consume("q", prefetch=1, timeout=100)
    try:
        sent = broker.enqueue(dramatiq.Message("q", "noop", (), {}, {}))
        wait_for(lambda: next(dying), timeout=20, what="the delivery to the dying worker")
        # It dies holding the message unacknowledged: it never beats or acks again.
        time.sleep(0.3)  # not a check: lets its heartbeat grow older than the survivor's 200 ms
        survivor.beat(["q", "q.DQ"])  # by a 1 in 10 draw, this one beat would miss 90 %
        assert broker.client.lrange(f"{broker.namespace}:q", 0, -1) == [
            sent.options["redis_message_id"].encode()
        ]
    finally:
        dying.close()
        survivor.client.close()


def test_a_worker_stopping_wakes_idle_consumers_and_shortens_their_waits(broker) -> None:
    consumers = [broker.consume(q, prefetch=1, timeout=50) for q in ("q", "q.DQ")]
    try:
        waiting = [idle_in_thread(consumer) for consumer in consumers]
        broker.emit_before("worker_shutdown", None)
        for thread, returned in waiting:
            thread.join(20)
            assert returned == [None]
        assert [consumer._idle_cap() for consumer in consumers] == [50, 50]
        broker.emit_before("worker_boot", None)
        assert [consumer._idle_cap() for consumer in consumers] == [5000, 5000]
    finally:
        for consumer in consumers:
            consumer.close()


def test_a_worker_runs_sent_and_delayed_messages_and_stops(broker) -> None:
    with recording_worker(broker, threads=1) as (record, ran):
        record.send_with_options(args=(3,), delay=300)
        record.send(1)
        wait_for(lambda: len(ran) == 2, timeout=20, what="both messages")
    assert ran == [1, 3]
