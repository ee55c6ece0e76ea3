"""One supervised worker group per queue, resized while it runs.

`skillq up` and `skillq worker` (for every queue) run each queue's pool as its own child,
`skillq worker --queue Q --threads T --processes P`, which is `dramatiq skillq.actors
--queues Q`: a queue's jobs only ever take its own threads. `WorkerPools` is the
supervisor's reconciler: every few seconds it reads the desired sizes (`skillq workers
scale`, stored in the job store) and, for a queue whose size changed, starts a group of the
new size and retires the old one gracefully (SIGTERM: dramatiq stops taking messages, lets
running jobs finish for `shutdown_grace_secs`, then requeues what is left). A size of 0
retires the queue's group without a replacement.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from skillq.cli.supervisor import Child, Supervisor, python_command

logger = logging.getLogger("skillq.cli.worker_pools")


def pool_child(queue: str, threads: int, processes: int) -> Child:
    command = python_command(
        "-m",
        "skillq",
        "worker",
        "--queue",
        queue,
        "--threads",
        str(threads),
        "--processes",
        str(processes),
    )
    return Child(f"worker:{queue}", command)


class WorkerPools:
    """Keeps one child per queue at the desired size (a Supervisor reconciler).

    Parameters:
      sizes: Threads per process of each queue at start (0: no group for it).
      processes: Worker processes in each queue's group.
      read_desired: Returns the desired threads per queue (reads the store).
    """

    def __init__(
        self,
        sizes: dict[str, int],
        *,
        processes: int,
        read_desired: Callable[[], dict[str, int]],
    ) -> None:
        self.sizes = dict(sizes)
        self.processes = processes
        self.read_desired = read_desired

    def children(self) -> list[Child]:
        """The groups to start with."""
        return [pool_child(q, t, self.processes) for q, t in self.sizes.items() if t > 0]

    def __call__(self, supervisor: Supervisor) -> None:
        desired = self.read_desired()
        for queue, current in self.sizes.items():
            wanted = desired.get(queue, current)
            if wanted == current:
                continue
            name = f"worker:{queue}"
            for child in [c for c in supervisor.children if c.name == name]:
                supervisor.retire(child)
            if wanted > 0:
                supervisor.add(pool_child(queue, wanted, self.processes))
            logger.info("pool %s: %d -> %d threads per process", queue, current, wanted)
            self.sizes[queue] = wanted
