"""A worker that records what it ran, for the Redis consumer tests (a module of its own:
pytest imports conftest files itself, and a test importing one would load it twice)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import dramatiq


@contextmanager
def recording_worker(
    broker: dramatiq.Broker, *, threads: int
) -> Iterator[tuple[dramatiq.Actor, list[int]]]:
    """A running worker and an actor `record(i)` on queue `q` that appends `i` to the list;
    the worker must stop within 30 s on leaving."""
    ran: list[int] = []

    @dramatiq.actor(broker=broker, queue_name="q", actor_name="record")
    def record(i: int) -> None:
        ran.append(i)

    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
    worker.start()
    try:
        yield record, ran
    finally:
        stopper = threading.Thread(target=worker.stop, daemon=True)
        stopper.start()
        stopper.join(30)
        assert not stopper.is_alive(), "the worker did not stop"
