"""The consuming side of our Redis broker: priority levels, and idle waits that cost nothing.

Apart from the broker (`skillq.brokers.redis_priority`) because the two change for different
reasons: the broker decides where a message goes and who is told, the consumers how a worker
fetches it and how an idle one waits for it.

Fetches. A priority queue's consumer fetches from its highest level holding messages with
one script of our own on dramatiq's keys (`_FETCH_FIRST_FULL`), which also says whether it
left the queue empty, so the consumer then waits for a wake-up instead of fetching nothing.

Idle waits. Every send publishes on its queue's wake-up channel (a delayed send on its delay
queue's), and a consumer that found its list empty waits on that channel, so a new message
ends its wait within a round trip. The wait only has to end by itself for what sends no
wake-up: this worker's Redis heartbeat (every fetch refreshes it; dramatiq's maintenance
requeues the messages of a worker whose heartbeat is `heartbeat_timeout` old), and the
messages maintenance hands back from a dead worker. So an idle consumer waits up to the
broker's `idle_wait_secs` (5 s, at most a third of `heartbeat_timeout`) rather than
dramatiq's `worker_timeout` (1 s): twelve consumers (six queues and their delay queues) each
waking once a second for two or three round trips were nearly all of an idle worker's CPU
(1.8 % of a core of its 2 %). A delay queue's consumer still returns when the earliest eta it
holds comes (the worker moves a due message only when it returns). When a worker of the
process starts to stop, the broker wakes every consumer and they go back to dramatiq's
`worker_timeout`, so stopping is no slower than before.

An idle pass also runs dramatiq's maintenance on every level of the queue and on its delay
queue (a fetch of no message, all levels in one round trip; `PriorityRedisBroker.beat`), at
most every `IDLE_BEAT_GAP_SECS`: a dead worker's unacknowledged messages on any level go back
there at the first idle pass after its heartbeat expires.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, NamedTuple

import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import _RedisConsumer
from dramatiq.common import compute_backoff, current_millis, dq_name
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message

from skillq.brokers.redis_priority import LEVEL_OPTION

if TYPE_CHECKING:
    from skillq.brokers.redis_priority import PriorityRedisBroker

#: Shortest idle wait of the delay queue's consumer when a message is due (milliseconds).
MIN_DELAY_POLL_MS = 10
#: Shortest gap between two maintenance passes (`PriorityRedisBroker.beat`) of an idle
#: consumer (seconds): a worker faster than its producers finds the queue empty after nearly
#: every job.
IDLE_BEAT_GAP_SECS = 1.0
#: A priority consumer's fetch: up to `wanted` messages from the first of the given lists
#: (levels, highest first) that holds any, in one script run, and whether any of the lists
#: still holds one after it. Dramatiq's dispatch script fetches from one named list, so a
#: priority queue took two runs per fetch (find the level, then fetch from it), and a consumer
#: learnt that it had emptied the queue only from a further, empty fetch. The keys are
#: dramatiq's, so its ack, requeue and maintenance work on the result: the worker's
#: heartbeat, the message ids popped from the list's head, each added to this worker's
#: acknowledgement set of that list, and the bodies from the list's message hash.
#: Returns {index of the list (1-based), 1 if any list still holds a message else 0, bodies},
#: or {} when every list is empty. KEYS: namespace. ARGV: timestamp, worker id, wanted, lists.
_FETCH_FIRST_FULL = """
local namespace = KEYS[1]
local worker_id = ARGV[2]
local wanted = tonumber(ARGV[3])
redis.call("zadd", namespace .. ":__heartbeats__", ARGV[1], worker_id)
for i = 4, #ARGV do
    local list = namespace .. ":" .. ARGV[i]
    local ids = {}
    while #ids < wanted do
        local id = redis.call("lpop", list)
        if not id then break end
        ids[#ids + 1] = id
    end
    if #ids > 0 then
        redis.call("sadd", namespace .. ":__acks__." .. worker_id .. "." .. ARGV[i], unpack(ids))
        local more = 0
        for j = i, #ARGV do
            if redis.call("llen", namespace .. ":" .. ARGV[j]) > 0 then
                more = 1
                break
            end
        end
        return {i - 3, more, redis.call("hmget", list .. ".msgs", unpack(ids))}
    end
end
return {}
"""


class FirstFull(NamedTuple):
    """What `PriorityRedisConsumer.fetch_first_full` found."""

    #: The list the messages came from ("" if none).
    level: str
    #: Their bodies, oldest first (None for one whose body is gone, as dramatiq's fetch).
    bodies: list[bytes | None]
    #: It took the last message of every list (False when it found none).
    drained: bool


class _WokenConsumer(_RedisConsumer):
    """Dramatiq's Redis consumer that waits on its queue's wake-up channel when idle.

    Subclasses say how to fetch (`_fetch`) and how long an idle wait may last (`_idle_cap`).
    """

    broker: PriorityRedisBroker

    def __init__(self, broker: PriorityRedisBroker, queue_name: str, prefetch: int, timeout: int):
        super().__init__(broker, queue_name, prefetch, timeout)
        # Subscribed before the first fetch, so a message sent after it is never missed.
        self.wake = broker.client.pubsub(ignore_subscribe_messages=True)
        self.wake.subscribe(broker.wake_channel(queue_name))

    def close(self) -> None:
        try:
            self.wake.close()
        finally:
            self.broker.threads.release()
            super().close()

    def _fetch(self, wanted: int) -> list[bytes]:
        return self.broker.dispatch("fetch", self.queue_name, wanted)

    def _idle_cap(self) -> int:
        """The longest idle wait (milliseconds): a wake-up ends it early."""
        if self.broker.stopping:
            return self.timeout
        return max(self.timeout, int(self.broker.idle_wait_secs * 1000))

    def _idle_wait(self, seconds: float) -> None:
        """Wait for a wake-up from an enqueue, or `seconds`.

        Every pending notification is read, so a burst of sends wakes the consumer once."""
        if self.wake.get_message(timeout=seconds) is None:
            return
        while self.wake.get_message(timeout=0) is not None:
            pass

    def requeue(self, messages: list[Message]) -> None:
        """Give messages back (a worker stopping) and wake the idle consumers of the queue."""
        self._requeue(messages)
        if messages:
            self.broker.wake(self.queue_name)

    def _requeue(self, messages: list[Message]) -> None:
        super().requeue(messages)

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
                if messages:
                    continue
                # Empty: a new message wakes us. Busy up to the prefetch: an ack frees a slot.
                longest = self._idle_cap() if fetched else self.timeout
                self.misses, wait_ms = compute_backoff(self.misses, max_backoff=longest)
                if fetched:
                    self._idle_wait(wait_ms / 1000)
                else:
                    time.sleep(wait_ms / 1000)
                return None
        except redis.ConnectionError as error:
            raise ConnectionClosed(error) from None


class PriorityRedisConsumer(_WokenConsumer):
    """Fetches from the highest level holding messages, acks on the level it fetched from."""

    def __init__(self, broker: PriorityRedisBroker, queue_name: str, prefetch: int, timeout: int):
        super().__init__(broker, queue_name, prefetch, timeout)
        self.levels = broker.levels(queue_name)
        self._fetch_first_full = broker.client.register_script(_FETCH_FIRST_FULL)
        self.beaten_at = float("-inf")
        #: The last fetch took the last of the messages on every level (see `_fetch`).
        self.drained = False

    def fetch_first_full(self, wanted: int) -> FirstFull:
        """Up to `wanted` messages from the highest level that holds any: one round trip, on
        the calling thread's connection. See `_FETCH_FIRST_FULL`."""
        broker = self.broker
        wanted = min(wanted, broker._max_unpack_size())
        args = [current_millis(), broker.broker_id, wanted, *self.levels]
        found = self._fetch_first_full(
            keys=[broker.namespace], args=args, client=broker.threads.get()
        )
        if not found:
            return FirstFull("", [], drained=False)
        index, more, bodies = found
        return FirstFull(self.levels[index - 1], bodies, drained=not more)

    def _level(self, message: Message) -> str:
        return message.options.get(LEVEL_OPTION, self.queue_name)

    def ack(self, message: Message) -> None:
        self._settle("ack", message)

    def nack(self, message: MessageProxy) -> None:
        self._settle("nack", message)
        self.broker.failures.remember(message.options["redis_message_id"], message._exception)

    def _settle(self, command: str, message: Message) -> None:
        """Ack or nack on the level the message was fetched from, not the queue's own list."""
        try:
            self.broker.dispatch(command, self._level(message), message.options["redis_message_id"])
        except redis.ConnectionError as error:
            raise ConnectionClosed(error) from None
        finally:
            self.queued_message_ids.discard(message.message_id)

    def _requeue(self, messages: list[Message]) -> None:
        by_level: dict[str, list[str]] = {}
        for message in messages:
            by_level.setdefault(self._level(message), []).append(
                message.options["redis_message_id"]
            )
        for level, message_ids in by_level.items():
            self.broker.do_requeue(level, *message_ids)

    def _fetch(self, wanted: int) -> list[bytes]:
        """Fetch from the highest level holding messages, in one round trip
        (`fetch_first_full`). When this fetch draws dramatiq's maintenance chance, the level
        it fetched from gets its pass (a beat) after it.

        A fetch that took the queue's last message makes the next one unneeded: it would
        find nothing, and a message sent after it wakes the idle wait that follows anyway. So
        the next call only beats (if due) and returns nothing, and the consumer goes straight
        to that wait. On Redis end to end (a worker keeping up with one client's sends) a job
        used to cost its fetch, the empty fetch after it and the wake-up between them; now
        one fetch and the wake-up (Redis script runs per job 4.1 -> 3.0).

        With none waiting, at most every `IDLE_BEAT_GAP_SECS`, beat on every level and the
        delay queue (their maintenance pass; see the module's doc)."""
        if self.drained:
            self.drained = False
            self._beat_if_due()
            return []
        found = self.fetch_first_full(wanted)
        self.drained = found.drained
        if found.bodies:
            if self.broker._should_do_maintenance("fetch"):
                self.broker.beat([found.level])
            return found.bodies
        self._beat_if_due()
        return []

    def _beat_if_due(self) -> None:
        now = time.monotonic()
        if now - self.beaten_at >= IDLE_BEAT_GAP_SECS:
            self.beaten_at = now
            self.broker.beat([*self.levels, dq_name(self.queue_name)])


class DelayQueueConsumer(_WokenConsumer):
    """Dramatiq's delay-queue consumer, whose idle wait never outlasts the earliest eta among
    the messages it handed to the worker and that are not yet moved (acked)."""

    def __init__(self, broker: PriorityRedisBroker, queue_name: str, prefetch: int, timeout: int):
        super().__init__(broker, queue_name, prefetch, timeout)
        self._etas: dict[str, int] = {}

    def __next__(self) -> MessageProxy | None:
        message = super().__next__()
        if message is not None:
            eta = message.options.get("eta")
            self._etas[message.options["redis_message_id"]] = eta if isinstance(eta, int) else 0
        return message

    def _idle_cap(self) -> int:
        longest = super()._idle_cap()
        if not self._etas:
            return longest
        wait = min(self._etas.values()) - current_millis()
        return int(min(longest, max(wait, MIN_DELAY_POLL_MS)))

    def ack(self, message: MessageProxy) -> None:
        self._etas.pop(message.options.get("redis_message_id"), None)
        super().ack(message)

    def nack(self, message: MessageProxy) -> None:
        self._etas.pop(message.options.get("redis_message_id"), None)
        super().nack(message)
