"""Dramatiq's Redis broker plus message priority: one Redis list per priority level.

Dramatiq's Redis broker keeps one list per queue and so ignores `broker_priority`. Here a
message of the default priority (5) goes on the queue's own list, as before, and any other
priority on a list of its own (`<queue>.p8`); the consumer fetches from the highest
non-empty level first, so a worker runs higher priorities first and FIFO within a level.
Everything else is dramatiq's: the Lua dispatch script, acknowledgements per level, the
heartbeats, and dead-worker maintenance (a consumer fetches from each level in turn while
the queue is idle, so a dead worker's unacknowledged messages on any level get their
maintenance pass).
Delayed messages (delayed jobs, retries with back-off) wait in the queue's delay queue as
usual and take their level when they come due. Two things make them start on time (within
milliseconds, where dramatiq's idle back-off adds up to a second at each of two hops): the
delay queue's consumer never idles past the earliest eta it handed to the worker (dramatiq
moves a due message only when that consumer returns), and a local enqueue wakes this
process's idle queue consumers at once. Dead letters stay `dead_message_ttl` (7 days), as
dramatiq's.

Wake-up. Dramatiq's consumer polls an empty queue with a back-off growing to the worker
timeout (1 s), so an idle worker started a job ~50 ms after it was sent, on average. Here each
enqueue also publishes the queue's name on a pub/sub channel (`<namespace>:<queue>.wake`), and
a consumer that found its queue empty waits on that channel, for at most the same back-off,
instead of sleeping: a job sent to an idle worker starts within a round trip. The channel only
wakes; messages stay where dramatiq keeps them, so a lost notification (a dropped connection,
a message requeued by maintenance) costs no more than the old polling did.

`join` and `dead_letters` behave as on Dramatiq's `StubBroker`, so Dramatiq's own
broker-generic tests run against this broker (tests/dramatiq_suite).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from uuid import uuid4

import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import compute_backoff, current_millis, dq_name
from dramatiq.errors import ConnectionClosed, QueueJoinTimeout
from dramatiq.message import Message

from skillq.brokers.batch_sends import NotAllSent
from skillq.brokers.failures import RecentFailures

DEFAULT_PRIORITY = 5
MAX_PRIORITY = 10
#: Message option naming the Redis list a message was queued on (its queue or a level).
LEVEL_OPTION = "redis_level"
#: Shortest idle wait of the delay queue's consumer when a message is due (milliseconds).
MIN_DELAY_POLL_MS = 10
#: Shortest gap between two fetches of an idle consumer that only keep its heartbeat and
#: give a level its maintenance chance (seconds).
IDLE_FETCH_GAP_SECS = 0.1
#: The 1-based index of the first of KEYS (lists) that is not empty, else 0.
_FIRST_FULL_LEVEL = """
for i, key in ipairs(KEYS) do
    if redis.call("llen", key) > 0 then return i end
end
return 0
"""
#: Options only this broker reads; `dead_letters` hands messages back without them.
_BOOKKEEPING_OPTIONS = ("redis_message_id", LEVEL_OPTION)


def level_name(queue_name: str, priority: int) -> str:
    return queue_name if priority == DEFAULT_PRIORITY else f"{queue_name}.p{priority}"


def priority_of(message: Message) -> int:
    priority = message.options.get("broker_priority", DEFAULT_PRIORITY)
    if not isinstance(priority, int) or isinstance(priority, bool):
        return DEFAULT_PRIORITY
    return max(0, min(MAX_PRIORITY, priority))


class PriorityRedisBroker(RedisBroker):
    """Dramatiq's `RedisBroker` plus priority; ``fail_fast_default`` as on `StubBroker`
    (False here, since a real queue keeps old dead letters)."""

    def __init__(self, *args: object, fail_fast_default: bool = False, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.fail_fast_default = fail_fast_default
        self.failures = RecentFailures()  # the consumer's nack fills it, `join` reads it
        self.first_full_level = self.client.register_script(_FIRST_FULL_LEVEL)

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return _PriorityRedisConsumer

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> _RedisConsumer:
        if queue_name.endswith(".DQ"):
            return _DelayQueueConsumer(self, queue_name, prefetch, timeout)
        return _PriorityRedisConsumer(self, queue_name, prefetch, timeout)

    def enqueue(self, message: Message, *, delay: int | None = None) -> Message:
        if delay is not None:
            return super().enqueue(message, delay=delay)
        level, message = self._leveled(message)
        self.emit_before("enqueue", message, None)
        self._enqueue_and_wake(level, message)
        self.emit_after("enqueue", message, None)
        return message

    def _leveled(self, message: Message) -> tuple[str, Message]:
        level = level_name(message.queue_name, priority_of(message))
        # Every enqueue needs its own id in Redis: retries reuse the dramatiq message id.
        message = message.copy(options={"redis_message_id": str(uuid4()), LEVEL_OPTION: level})
        return level, message

    def enqueue_many(self, items: list[tuple[Message, int | None]]) -> None:
        """A batch submit's messages: every undelayed one's dispatch script and one wake-up
        per queue in one pipeline (one round trip, not one per message); delayed ones go
        one by one through dramatiq's path. Raises `NotAllSent` naming what may be unsent."""
        now: list[tuple[int, str, Message]] = []
        sent: set[int] = set()
        try:
            for index, (message, delay) in enumerate(items):
                if delay is None:
                    now.append((index, *self._leveled(message)))
                else:
                    self.enqueue(message, delay=delay)
                    sent.add(index)
            for _, _, message in now:
                self.emit_before("enqueue", message, None)
            pipe = self.client.pipeline(transaction=False)
            for _, level, message in now:
                pipe.evalsha(
                    self.scripts["dispatch"].sha, 1, self.namespace, *self._args(level, message)
                )
            for queue_name in dict.fromkeys(message.queue_name for _, _, message in now):
                pipe.publish(self.wake_channel(queue_name), b"1")
            results = pipe.execute(raise_on_error=False) if now else []
            for (index, level, message), enqueued in zip(now, results, strict=False):
                if isinstance(enqueued, redis.exceptions.NoScriptError):
                    self.do_enqueue(level, message.options["redis_message_id"], message.encode())
                elif isinstance(enqueued, Exception):
                    raise enqueued
                sent.add(index)
                self.emit_after("enqueue", message, None)
        except Exception as error:
            unsent = [index for index in range(len(items)) if index not in sent]
            raise NotAllSent(unsent, error) from error

    def _enqueue_and_wake(self, level: str, message: Message) -> None:
        """dramatiq's enqueue (its dispatch script, with the arguments its `do_enqueue`
        gives) and the wake-up of `_wake`, sent together in one round trip instead of two
        (a submit's Redis time 2 -> 1 round trips). The script runs by its hash; a server
        that lost it (a restart, SCRIPT FLUSH) gets the usual call, which loads it."""
        pipe = self.client.pipeline(transaction=False)
        pipe.evalsha(self.scripts["dispatch"].sha, 1, self.namespace, *self._args(level, message))
        pipe.publish(self.wake_channel(message.queue_name), b"1")
        enqueued, woken = pipe.execute(raise_on_error=False)
        if isinstance(enqueued, redis.exceptions.NoScriptError):
            self.do_enqueue(level, message.options["redis_message_id"], message.encode())
            self._wake(message.queue_name)
        elif isinstance(enqueued, Exception):
            raise enqueued
        elif isinstance(woken, Exception):
            self.logger.debug("Could not wake the consumers of %r: %s", level, woken)

    def _args(self, level: str, message: Message) -> list[object]:
        """The dispatch script's arguments for an enqueue, as dramatiq's `do_enqueue` gives."""
        return [
            "enqueue", current_millis(), level, self.broker_id, self.heartbeat_timeout,
            self.dead_message_ttl, self._should_do_maintenance("enqueue"),
            self._max_unpack_size(), message.options["redis_message_id"], message.encode(),
        ]  # fmt: skip

    def wake_channel(self, queue_name: str) -> str:
        return f"{self.namespace}:{queue_name}.wake"

    def _wake(self, queue_name: str) -> None:
        """Tell idle consumers of the queue to fetch now; the message is already queued, so a
        failure here only delays its start to the next poll."""
        try:
            self.client.publish(self.wake_channel(queue_name), b"1")
        except redis.RedisError as error:
            self.logger.debug("Could not wake the consumers of %r: %s", queue_name, error)

    def levels(self, queue_name: str) -> list[str]:
        """The queue's lists, highest priority first."""
        return [level_name(queue_name, p) for p in range(MAX_PRIORITY, -1, -1)]

    def flush(self, queue_name: str) -> None:
        for level in self.levels(queue_name):
            self.do_purge(level)
        self.do_purge(dq_name(queue_name))

    def flush_all(self) -> None:
        super().flush_all()
        self.failures.clear()

    def join(
        self,
        queue_name: str,
        *,
        interval: int = 100,
        timeout: int | None = None,
        fail_fast: bool | None = None,
    ) -> None:
        """Wait until no level of the queue holds a message (``timeout`` in ms, like dramatiq).

        One pass counts the queue's own list (with its delay queue) before and after the
        levels, so a message moving between the delay queue and a level is always seen. With
        ``fail_fast`` (default: ``fail_fast_default``), then raise the exception of the queue's
        oldest dead letter, as `StubBroker` does (a plain `Exception` if another process
        dead-lettered it).
        """
        deadline = None if timeout is None else time.monotonic() + timeout / 1000
        lists = [queue_name, *self.levels(queue_name), queue_name]
        while sum(self.do_qsize(name) for name in lists):
            if deadline is not None and time.monotonic() >= deadline:
                raise QueueJoinTimeout(queue_name)
            time.sleep(interval / 1000)
        if not (self.fail_fast_default if fail_fast is None else fail_fast):
            return
        dead = self._dead_letters_of(queue_name)
        if dead:
            redis_id, message = dead[0]
            unknown = Exception(f"Message {message.message_id} was dead-lettered")
            raise self.failures.get(redis_id) or unknown

    @property
    def dead_letters(self) -> list[Message]:
        """Dead-lettered messages of every declared queue, oldest first per queue."""
        return [message for queue in self.queues for _, message in self._dead_letters_of(queue)]

    def _dead_letters_of(self, queue_name: str) -> list[tuple[str, Message]]:
        """(redis message id, message without our bookkeeping options), oldest first."""
        found: list[tuple[float, str, Message]] = []
        for level in self.levels(queue_name):
            dead_queue = f"{self.namespace}:{level}.XQ"
            ids = self.client.zrange(dead_queue, 0, -1, withscores=True)
            if not ids:
                continue
            bodies = self.client.hmget(f"{dead_queue}.msgs", [i for i, _ in ids])
            for (redis_id, score), body in zip(ids, bodies, strict=True):
                if body is None:  # expired by maintenance between the two reads
                    continue
                message = Message.decode(body)
                options = {
                    k: v for k, v in message.options.items() if k not in _BOOKKEEPING_OPTIONS
                }
                message = dataclasses.replace(message, options=options)
                found.append((score, redis_id.decode(), message))
        found.sort(key=lambda item: item[0])
        return [(redis_id, message) for _, redis_id, message in found]


class _PriorityRedisConsumer(_RedisConsumer):
    def __init__(self, broker: PriorityRedisBroker, queue_name: str, prefetch: int, timeout: int):
        super().__init__(broker, queue_name, prefetch, timeout)
        self.levels = broker.levels(queue_name)
        self.level_keys = [f"{broker.namespace}:{level}" for level in self.levels]
        self.idle_turn = 0
        self.idle_fetched_at = float("-inf")
        # Subscribed before the first fetch, so a message sent after it is never missed.
        self.wake = broker.client.pubsub(ignore_subscribe_messages=True)
        self.wake.subscribe(broker.wake_channel(queue_name))

    def close(self) -> None:
        try:
            self.wake.close()
        finally:
            super().close()

    def _idle_wait(self, seconds: float) -> None:
        """Wait for a wake-up from an enqueue, or `seconds` (the polling back-off).

        Every pending notification is read, so a burst of sends wakes the consumer once."""
        if self.wake.get_message(timeout=seconds) is None:
            return
        while self.wake.get_message(timeout=0) is not None:
            pass

    def _level(self, message: Message) -> str:
        return message.options.get(LEVEL_OPTION, self.queue_name)

    def ack(self, message: Message) -> None:
        self._settle(self.broker.do_ack, message)

    def nack(self, message: MessageProxy) -> None:
        self._settle(self.broker.do_nack, message)
        self.broker.failures.remember(message.options["redis_message_id"], message._exception)

    def _settle(self, command: Callable[..., object], message: Message) -> None:
        """Ack or nack on the level the message was fetched from, not the queue's own list."""
        try:
            command(self._level(message), message.options["redis_message_id"])
        except redis.ConnectionError as error:
            raise ConnectionClosed(error) from None
        finally:
            self.queued_message_ids.discard(message.message_id)

    def requeue(self, messages: list[Message]) -> None:
        by_level: dict[str, list[str]] = {}
        for message in messages:
            by_level.setdefault(self._level(message), []).append(
                message.options["redis_message_id"]
            )
        for level, message_ids in by_level.items():
            self.broker.do_requeue(level, *message_ids)

    def _fetch(self, wanted: int) -> list[bytes]:
        """Fetch from the highest level holding messages, found in one round trip
        (`_FIRST_FULL_LEVEL`). With none waiting, fetch from one level, each in turn, so the
        worker's heartbeat stays fresh and every level still gets its maintenance chance (a
        dead worker's unacknowledged messages go back to their level there).

        It used to try every level in turn, each a run of dramatiq's dispatch script: five
        empty fetches before each fetch of the default level, eleven per idle pass; on a
        busy worker, 8 of the 10 script runs per job. The turn is taken at most every
        `IDLE_FETCH_GAP_SECS`: a worker faster than its producers finds the queue empty
        after nearly every job."""
        full = self.broker.first_full_level(keys=self.level_keys)
        if full:
            return self.broker.do_fetch(self.levels[full - 1], wanted)
        now = time.monotonic()
        if now - self.idle_fetched_at < IDLE_FETCH_GAP_SECS:
            return []
        self.idle_fetched_at = now
        level = self.levels[self.idle_turn % len(self.levels)]
        self.idle_turn += 1
        return self.broker.do_fetch(level, wanted)

    def __next__(self) -> MessageProxy | None:
        try:
            while True:
                if self.message_cache:
                    data = self.message_cache.pop(0)
                    if data is None:
                        continue
                    self.misses = 0
                    message = Message.decode(data)
                    self.queued_message_ids.add(message.message_id)
                    return MessageProxy(message)
                messages = []
                fetched = self.outstanding_message_count < self.prefetch
                if fetched:
                    messages = self._fetch(self.prefetch - self.outstanding_message_count)
                    self.message_cache = messages
                if not messages:
                    self.misses, backoff_ms = compute_backoff(self.misses, max_backoff=self.timeout)
                    if fetched:  # the queue is empty: a new message wakes us
                        self._idle_wait(backoff_ms / 1000)
                    else:  # busy up to the prefetch: nothing to fetch until an ack
                        time.sleep(backoff_ms / 1000)
                    return None
        except redis.ConnectionError as error:
            raise ConnectionClosed(error) from None


class _DelayQueueConsumer(_RedisConsumer):
    """Dramatiq's delay-queue consumer, whose idle back-off never outlasts the earliest eta
    among the messages it handed to the worker and that are not yet moved (acked)."""

    def __init__(self, broker: PriorityRedisBroker, queue_name: str, prefetch: int, timeout: int):
        super().__init__(broker, queue_name, prefetch, timeout)
        self.max_timeout = timeout
        self._etas: dict[str, int] = {}

    def __next__(self) -> MessageProxy | None:
        self.timeout = self._idle_cap()
        message = super().__next__()
        if message is not None:
            eta = message.options.get("eta")
            self._etas[message.options["redis_message_id"]] = eta if isinstance(eta, int) else 0
        return message

    def _idle_cap(self) -> int:
        if not self._etas:
            return self.max_timeout
        wait = min(self._etas.values()) - current_millis()
        return int(min(self.max_timeout, max(wait, MIN_DELAY_POLL_MS)))

    def ack(self, message: MessageProxy) -> None:
        self._etas.pop(message.options.get("redis_message_id"), None)
        super().ack(message)

    def nack(self, message: MessageProxy) -> None:
        self._etas.pop(message.options.get("redis_message_id"), None)
        super().nack(message)
