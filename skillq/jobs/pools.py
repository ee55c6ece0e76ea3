"""A worker pool per queue: how many threads each queue's worker processes run.

Each queue is served by its own group of worker processes (`dramatiq skillq.actors
--queues Q --threads T`), so a flood of one job type waits in its own queue and cannot take
the threads of another. A pool's size starts at its `[workers] <queue>_workers` setting
(queues without a setting of their own, such as a plugin's, use `default_workers`); an
operator can change it while the system runs (`skillq workers scale`, `PUT
/api/v1/workers/scale`), which records the desired size in the store for the supervisor of
`skillq up` to apply. The actual size is what the worker registry says the processes run.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from skillq.errors import InvalidParams, InvalidRequest
from skillq.settings import Settings
from skillq.storage import pools, workers
from skillq.storage.database import in_connection

#: The queues of the built-in job types, each with a `<queue>_workers` setting.
QUEUES = ("ai", "index", "skill", "default", "maintenance", "webhooks")
MAX_THREADS = 256


def served_queues(declared: Iterable[str]) -> list[str]:
    """The built-in queues, then any other queue the actors declare (a plugin's), sorted."""
    return [*QUEUES, *sorted(set(declared) - set(QUEUES))]


@in_connection
def registered_queues() -> set[str]:
    """Every queue a worker in the registry serves or served."""
    return {queue for entry in workers.list_workers(0) for queue in entry.worker.queues}


def configured_threads(settings: Settings, queue: str) -> int:
    """The setting for the queue's pool; `default_workers` for a queue without one. The
    webhook deliveries' pool runs only where webhooks are set up (a `[webhooks] secret` or
    subscriptions): otherwise there is nothing to deliver."""
    w = settings.workers
    if queue == "webhooks" and not (settings.webhooks.secret or settings.webhooks.subscriptions):
        return 0
    return getattr(w, f"{queue}_workers") if queue in QUEUES else w.default_workers


@in_connection
def desired_threads(settings: Settings, queues: list[str]) -> dict[str, int]:
    """Each queue's size: what an operator asked for, else its setting."""
    scaled = pools.desired_threads()
    return {q: scaled.get(q, configured_threads(settings, q)) for q in queues}


def parse_sizes(pairs: list[str]) -> dict[str, int]:
    """`["ai=4", "skill=8"]` as the CLI takes them."""
    sizes: dict[str, Any] = {}
    for pair in pairs:
        queue, sep, count = pair.partition("=")
        if not sep or not queue:
            raise InvalidRequest(f"{pair!r}: expected QUEUE=THREADS, e.g. skill=8")
        try:
            sizes[queue] = int(count)
        except ValueError:
            raise InvalidRequest(f"{pair!r}: THREADS must be a whole number") from None
    return sizes


def check_sizes(sizes: Any, queues: list[str]) -> dict[str, int]:
    """Refuse unknown queues and counts out of range, naming each bad entry."""
    if not isinstance(sizes, dict) or not sizes:
        raise InvalidParams(
            "expected at least one queue and its threads",
            [{"path": "threads", "message": 'an object such as {"skill": 8}'}],
        )
    problems = []
    checked = {}
    for queue, count in sizes.items():
        if isinstance(count, float) and count.is_integer():
            count = int(count)  # JSON Schema's integer: 8.0 is 8
        checked[queue] = count
        if queue not in queues:
            problems.append(
                {"path": f"threads.{queue}", "message": f"no such queue ({', '.join(queues)})"}
            )
        elif isinstance(count, bool) or not isinstance(count, int):
            problems.append({"path": f"threads.{queue}", "message": "must be an integer"})
        elif not 0 <= count <= MAX_THREADS:
            problems.append(
                {"path": f"threads.{queue}", "message": f"must be between 0 and {MAX_THREADS}"}
            )
    if problems:
        raise InvalidParams("cannot scale these pools", problems)
    return checked


@in_connection
def scale(sizes: Any, queues: list[str], *, updated_by: str) -> None:
    """Record the desired threads of each named queue (0 stops its pool)."""
    pools.set_desired_threads(check_sizes(sizes, queues), updated_by=updated_by)


@in_connection
def pool_status(settings: Settings, queues: list[str]) -> dict[str, Any]:
    """Desired against actual, per queue: what the supervisor aims at and what runs."""
    scaled = pools.desired_threads()
    alive = [
        entry.worker
        for entry in workers.list_workers(settings.workers.dead_after_secs)
        if entry.status == "alive"
    ]
    rows = []
    for queue in queues:
        serving = [w for w in alive if w.queues == [queue]]
        desired = scaled.get(queue, configured_threads(settings, queue))
        rows.append(
            {
                "queue": queue,
                "desired_threads": desired,
                "desired_processes": settings.workers.processes if desired else 0,
                "source": "scaled" if queue in scaled else "settings",
                # One entry per live process serving just this queue (an old group still
                # draining after a scale shows here beside the new one until it stops).
                "actual_threads": sorted(w.threads for w in serving),
            }
        )
    return {"pools": rows}
