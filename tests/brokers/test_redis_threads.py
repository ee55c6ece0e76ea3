"""Each thread of a Redis worker fetches and acks on a connection of its own
(`skillq.brokers.redis_threads`): it survives the server dropping it, goes back to the pool
when the worker stops, and a forked child never writes on its parent's socket."""

from __future__ import annotations

import multiprocessing
import threading

import redis

from skillq.brokers.redis_priority import PriorityRedisBroker
from skillq.brokers.redis_threads import ThreadClients
from tests.brokers.redis_workers import recording_worker
from tests.brokers.test_redis_priority import REDIS_URL
from tests.support import require_service, wait_for


def in_use(broker: PriorityRedisBroker) -> set[object]:
    return set(broker.client.connection_pool._in_use_connections)


def test_a_workers_threads_give_their_connections_back_when_it_stops(broker) -> None:
    before = in_use(broker)
    with recording_worker(broker, threads=3) as (record, ran):
        for i in range(20):
            record.send(i)
        wait_for(lambda: len(ran) == 20, timeout=20, what="the messages to run")
        # Two consumers: a wake-up subscription and a fetching thread each; acking threads.
        assert len(in_use(broker) - before) >= 5
    assert in_use(broker) == before
    assert sorted(ran) == list(range(20))


def test_a_worker_goes_on_after_the_server_drops_its_connections(broker) -> None:
    """A dropped connection is made again at the thread's next call, as the pool would."""
    with recording_worker(broker, threads=1) as (record, ran):
        record.send(1)
        wait_for(lambda: ran == [1], timeout=20, what="the first message")
        admin = redis.Redis.from_url(REDIS_URL)
        held = [c for c in in_use(broker) if getattr(c, "_sock", None) is not None]
        assert held
        for connection in held:
            host, port = connection._sock.getsockname()[:2]
            admin.client_kill(f"{host}:{port}")
        for i in range(2, 6):
            record.send(i)
        wait_for(lambda: len(ran) == 5, timeout=30, what="the messages sent after the drop")
    assert sorted(ran) == [1, 2, 3, 4, 5]


def _child_ping(clients: ThreadClients, parent_connection_id: int, out) -> None:
    client = clients.get()
    out.put((id(client.connection) != parent_connection_id, client.ping()))


def test_threads_and_a_forked_child_each_get_a_connection_of_their_own() -> None:
    require_service("redis")
    pool = redis.ConnectionPool.from_url(REDIS_URL)
    clients = ThreadClients(pool)
    mine = clients.get()
    assert clients.get() is mine
    theirs: list[redis.Redis] = []
    thread = threading.Thread(target=lambda: theirs.append(clients.get()))
    thread.start()
    thread.join()
    assert theirs[0].connection is not mine.connection
    assert mine.ping()

    context = multiprocessing.get_context("fork")
    out = context.Queue()
    child = context.Process(target=_child_ping, args=(clients, id(mine.connection), out))
    child.start()
    own_connection, pinged = out.get(timeout=20)
    child.join(20)
    assert child.exitcode == 0
    assert own_connection and pinged
    # The child's exit did not touch the parent's socket.
    assert mine.ping()
    clients.release()
    assert mine.connection is None
    pool.disconnect()
