"""A Redis connection of its own for each thread of a worker that calls Redis per message.

Nearly all of a worker's Redis calls are its consumers' fetches (each in its consumer's
thread) and the acks of the messages they handed out (in the worker threads). Through
redis-py's shared pool every call checks a connection out and back in, and the checkout polls
the socket for unread data: 26 of the 103 µs of client CPU a fetch or an ack took
(`bench/redis_calls.py`). A thread that keeps one connection for itself pays neither.

The connection comes from the broker's pool (same server, options and credentials) and goes
back to it when its thread stops using Redis: a consumer when it closes, a worker thread at
dramatiq's `worker_thread_shutdown`.
"""

from __future__ import annotations

import os
import threading

import redis


class ThreadClients:
    """One single-connection `redis.Redis` per thread (and per process: a forked child makes
    its own rather than share its parent's socket)."""

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self._pool = pool
        self._local = threading.local()

    def get(self) -> redis.Redis:
        """The calling thread's client, made on first use."""
        local = self._local
        client: redis.Redis | None = getattr(local, "client", None)
        if client is None or local.pid != os.getpid():
            client = redis.Redis(connection_pool=self._pool, single_connection_client=True)
            local.client, local.pid = client, os.getpid()
        return client

    def release(self) -> None:
        """Give the calling thread's connection back to the pool, if it took one."""
        client = getattr(self._local, "client", None)
        if client is None:
            return
        self._local.client = None
        if self._local.pid == os.getpid():
            client.close()
