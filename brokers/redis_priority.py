"""Dramatiq's Redis broker plus message priority: one Redis list per priority level.

Dramatiq's Redis broker keeps one list per queue and so ignores `broker_priority`. Here a
message of the default priority (5) goes on the queue's own list, as before, and any other
priority on a list of its own (`<queue>.p8`); the consumer fetches from the highest
non-empty level first, so a worker runs higher priorities first and FIFO within a level.
A consumer fetches from the first level holding messages with one script of our own on
dramatiq's keys (`skillq.brokers.redis_consumers`); everything else is dramatiq's: its Lua
dispatch script for sends, acks and requeues, acknowledgements per level, the heartbeats, and
dead-worker maintenance (an idle consumer runs it on every level and the delay queue at each
beat, so a dead worker's unacknowledged messages on any level come back once its heartbeat
expires).
Delayed messages (delayed jobs, retries with back-off) wait in the queue's delay queue as
usual and take their level when they come due. They start on time (within milliseconds, where
dramatiq's idle back-off adds up to a second at each of two hops): the delay queue's consumer
never idles past the earliest eta it handed to the worker (dramatiq moves a due message only
when that consumer returns), and a local enqueue wakes this process's idle queue consumers at
once. Dead letters stay `dead_message_ttl` (7 days), as dramatiq's.

Wake-up. Dramatiq's consumer polls an empty queue with a back-off growing to the worker
timeout (1 s), so an idle worker started a job ~50 ms after it was sent, on average. Here each
enqueue also publishes the queue's name on a pub/sub channel (`<namespace>:<queue>.wake`; a
delayed one on `<namespace>:<queue>.DQ.wake`), and a consumer that found its list empty waits
on that channel instead of sleeping: a job sent to an idle worker starts within a round trip.
The channel only wakes; messages stay where dramatiq keeps them, so a lost notification (a
dropped connection, a message requeued by maintenance) costs at most one idle wait
(`idle_wait_secs`, 5 s). How the consumers wait: `skillq.brokers.redis_consumers`.

`join` and `dead_letters` behave as on Dramatiq's `StubBroker`, so Dramatiq's own
broker-generic tests run against this broker (tests/dramatiq_suite).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any
from uuid import uuid4

import redis
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import current_millis, dq_name
from dramatiq.errors import QueueJoinTimeout
from dramatiq.message import Message

from skillq.brokers.batch_sends import NotAllSent
from skillq.brokers.failures import RecentFailures
from skillq.brokers.middleware_hooks import OverriddenHooks
from skillq.brokers.redis_threads import ThreadClients

DEFAULT_PRIORITY = 5
MAX_PRIORITY = 10
#: Message option naming the Redis list a message was queued on (its queue or a level).
LEVEL_OPTION = "redis_level"
#: Longest idle wait of a consumer (seconds; never more than a third of the heartbeat
#: timeout, nor less than dramatiq's `worker_timeout`): a send wakes it, see
#: `skillq.brokers.redis_consumers`.
IDLE_WAIT_SECS = 5.0
#: Options only this broker reads; `dead_letters` hands messages back without them.
_BOOKKEEPING_OPTIONS = ("redis_message_id", LEVEL_OPTION)


def level_name(queue_name: str, priority: int) -> str:
    return queue_name if priority == DEFAULT_PRIORITY else f"{queue_name}.p{priority}"


def priority_of(message: Message) -> int:
    priority = message.options.get("broker_priority", DEFAULT_PRIORITY)
    if not isinstance(priority, int) or isinstance(priority, bool):
        return DEFAULT_PRIORITY
    return max(0, min(MAX_PRIORITY, priority))


class PriorityRedisBroker(OverriddenHooks, RedisBroker):
    """Dramatiq's `RedisBroker` plus priority; ``fail_fast_default`` as on `StubBroker`
    (False here, since a real queue keeps old dead letters)."""

    def __init__(self, *args: object, fail_fast_default: bool = False, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.fail_fast_default = fail_fast_default
        self.failures = RecentFailures()  # the consumer's nack fills it, `join` reads it
        self.idle_wait_secs = min(IDLE_WAIT_SECS, self.heartbeat_timeout / 3000)
        self.stopping = False  # a worker of this process is shutting down (see `emit_before`)
        #: The calling thread's own connection, for the calls a worker makes per message.
        self.threads = ThreadClients(self.client.connection_pool)

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        from skillq.brokers.redis_consumers import PriorityRedisConsumer

        return PriorityRedisConsumer

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> _RedisConsumer:
        from skillq.brokers.redis_consumers import DelayQueueConsumer, PriorityRedisConsumer

        if queue_name.endswith(".DQ"):
            return DelayQueueConsumer(self, queue_name, prefetch, timeout)
        return PriorityRedisConsumer(self, queue_name, prefetch, timeout)

    def emit_before(self, signal: str, *args: object, **kwargs: object) -> None:
        """Idle consumers wait up to `idle_wait_secs`: when a worker starts to shut down, wake
        them and have them return as often as dramatiq's, so that it need not wait that long."""
        if signal == "worker_boot":
            self.stopping = False
        elif signal == "worker_shutdown":
            self.stopping = True
            self.wake(*self.queues)
        elif signal == "worker_thread_shutdown":
            self.threads.release()
        super().emit_before(signal, *args, **kwargs)

    def dispatch(self, command: str, list_name: str, *args: object) -> Any:
        """Dramatiq's `do_<command>` on `list_name`, on the calling thread's own connection
        (`skillq.brokers.redis_threads`): what consumers fetch and ack with."""
        return self.scripts["dispatch"](
            keys=[self.namespace],
            args=self._dispatch_args(command, list_name, *args),
            client=self.threads.get(),
        )

    def enqueue(self, message: Message, *, delay: int | None = None) -> Message:
        if delay is not None:
            # As dramatiq's, onto the delay queue, and its consumers woken in the same trip.
            message = message.copy(
                queue_name=dq_name(message.queue_name),
                options={"redis_message_id": str(uuid4()), "eta": current_millis() + delay},
            )
            self.emit_before("enqueue", message, delay)
            self._enqueue_and_wake(message.queue_name, message)
            self.emit_after("enqueue", message, delay)
            return message
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
        gives) onto `level` (a priority level, or the delay queue) and the wake-up of `wake`
        for the message's queue, sent together in one round trip instead of two (a submit's
        Redis time 2 -> 1 round trips). The script runs by its hash; a server that lost it
        (a restart, SCRIPT FLUSH) gets the usual call, which loads it."""
        pipe = self.client.pipeline(transaction=False)
        pipe.evalsha(self.scripts["dispatch"].sha, 1, self.namespace, *self._args(level, message))
        pipe.publish(self.wake_channel(message.queue_name), b"1")
        enqueued, woken = pipe.execute(raise_on_error=False)
        if isinstance(enqueued, redis.exceptions.NoScriptError):
            self.do_enqueue(level, message.options["redis_message_id"], message.encode())
            self.wake(message.queue_name)
        elif isinstance(enqueued, Exception):
            raise enqueued
        elif isinstance(woken, Exception):
            self.logger.debug("Could not wake the consumers of %r: %s", level, woken)

    def _args(self, level: str, message: Message) -> list[object]:
        """The dispatch script's arguments for an enqueue, as dramatiq's `do_enqueue` gives."""
        return self._dispatch_args(
            "enqueue", level, message.options["redis_message_id"], message.encode()
        )

    def _dispatch_args(
        self, command: str, list_name: str, *args: object, maintenance: bool = False
    ) -> list[object]:
        """The dispatch script's arguments, as dramatiq's `_dispatch` gives them; with
        `maintenance`, the script's maintenance pass runs for sure, not by chance."""
        maintain = 1 if maintenance else self._should_do_maintenance(command)
        return [
            command, current_millis(), list_name, self.broker_id, self.heartbeat_timeout,
            self.dead_message_ttl, maintain, self._max_unpack_size(), *args,
        ]  # fmt: skip

    def beat(self, lists: list[str]) -> None:
        """Dramatiq's fetch of no message on each of `lists` (levels, delay queues), in one
        round trip: it refreshes this worker's heartbeat and runs each list's maintenance
        pass, in which the unacknowledged messages of a dead worker on that list go back to
        it.

        The pass runs on every beat, not by dramatiq's draw (`maintenance_chance`, 10 % here):
        an idle consumer beats once per idle wait (5 s), so after a worker was SIGKILLed its
        messages waited for a lucky draw, 50 s on average and now and then minutes, where
        now they come back at the first beat after its heartbeat expires. A beat is at most
        once per `IDLE_BEAT_GAP_SECS` per consumer and only when idle, so the pass costs
        Redis less than the draws of a busy worker's fetches."""
        pipe = self.client.pipeline(transaction=False)
        sha = self.scripts["dispatch"].sha
        for name in lists:
            args = self._dispatch_args("fetch", name, 0, maintenance=True)
            pipe.evalsha(sha, 1, self.namespace, *args)
        results = pipe.execute(raise_on_error=False)
        for name, result in zip(lists, results, strict=True):
            if isinstance(result, redis.exceptions.NoScriptError):
                self.do_fetch(name, 0)  # the usual call, which loads the script
            elif isinstance(result, Exception):
                raise result

    def wake_channel(self, queue_name: str) -> str:
        return f"{self.namespace}:{queue_name}.wake"

    def wake(self, *queue_names: str) -> None:
        """Tell idle consumers of the queues (or delay queues) to fetch now, in one round trip;
        the messages are already queued, so a failure here only delays their start to the
        consumers' next idle pass."""
        try:
            pipe = self.client.pipeline(transaction=False)
            for queue_name in queue_names:
                pipe.publish(self.wake_channel(queue_name), b"1")
            pipe.execute()
        except redis.RedisError as error:
            self.logger.debug("Could not wake the consumers of %r: %s", queue_names, error)

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
