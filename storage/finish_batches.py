"""Group commit of the attempts' ends that the threads of one process write at about once.

A worker's threads each ended a job with a transaction of their own (a commit, and on
PostgreSQL a WAL flush, per job). Here a thread that finishes a job queues its write; if no
write is in flight it leads: it takes everything queued and writes it in one transaction
(`job_writes.finish_many`), then hands each waiting thread its own outcome. Threads that
arrive while a write is in flight wait, and the next leader takes them. No timer: a job that
finishes alone is written at once, as before, by its own thread; batches form only from the
writes that queue behind one in flight, so they grow with the load and cost no latency.

Every thread waits for its own write's commit before it returns, so the broker acknowledges
a message only once its job's outcome is stored (dramatiq acks after the
`after_process_message` hooks): a worker killed before the commit leaves the message unacked,
and its redelivery takes the job over (`brokers.job_starts`).

A batch that fails is rolled back whole, and each of its writes is then made alone by its
own thread on its own connection, as without batching: one bad row, or a leader whose
connection broke, does not fail the others' jobs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from skillq.storage import job_writes
from skillq.storage.database import database_proxy
from skillq.storage.job_writes import Finished, FinishWrite

logger = logging.getLogger(__name__)

_QUEUED, _DONE, _ALONE = "queued", "done", "alone"


class _Entry:
    """One thread's write waiting in the queue, and what became of it (compared by identity)."""

    __slots__ = ("outcome", "state", "write")

    def __init__(self, write: FinishWrite) -> None:
        self.write = write
        self.state = _QUEUED
        self.outcome: Finished | None = None


class FinishBatches:
    """The group commit of one process's finish writes (`finish`)."""

    def __init__(self) -> None:
        self._turn = threading.Condition()
        self._queued: list[_Entry] = []
        self._writing = False
        #: Writes made and transactions they took, for benchmarks and tests.
        self.writes = 0
        self.transactions = 0

    @property
    def queued(self) -> int:
        """Writes waiting for a leader to take them."""
        with self._turn:
            return len(self._queued)

    def finish(self, write: FinishWrite) -> Finished | None:
        """Write `write` with whatever else is queued; its outcome, as `job_writes.finish_one`.

        A caller inside a transaction of its own writes in it, alone: its write must commit
        or roll back with the rest of that transaction, not with a batch."""
        if database_proxy.in_transaction():
            return job_writes.finish_one(write)
        entry = _Entry(write)
        with self._turn:
            self._queued.append(entry)
            try:
                while self._writing and entry.state == _QUEUED:
                    self._turn.wait()
            except BaseException:
                # Interrupted while waiting: withdrawn if no leader took it yet.
                if any(queued is entry for queued in self._queued):
                    self._queued = [queued for queued in self._queued if queued is not entry]
                raise
            leading = entry.state == _QUEUED
            if leading:
                self._writing = True
                batch, self._queued = self._queued, []
        if leading:
            try:
                self._write(batch, entry)
            finally:
                with self._turn:
                    # Taken but not written (a failed group, an exception in this thread):
                    # each thread writes its own.
                    for taken in batch:
                        if taken.state == _QUEUED:
                            taken.state = _ALONE
                    self._writing = False
                    self._turn.notify_all()
        if entry.state == _ALONE:
            outcome = job_writes.finish_one(entry.write)
            self._count(1, 1)
            return outcome
        return entry.outcome

    def _write(self, batch: list[_Entry], own: _Entry) -> None:
        """Each group of writes that set the same columns in one transaction (a lone one
        as without batching: `finish_one`). A job twice in the batch (two deliveries) goes
        alone. A group that fails leaves its writes to their threads, except the leader's
        own write alone, whose error is its own: raised, after the other groups."""
        groups: dict[tuple[str, ...], list[_Entry]] = {}
        seen: set[str] = set()
        for entry in batch:
            if entry.write.job_id in seen:
                entry.state = _ALONE
                continue
            seen.add(entry.write.job_id)
            groups.setdefault(entry.write.columns, []).append(entry)
        # The leader's group last, so that its error cuts no other group short.
        for group in sorted(groups.values(), key=lambda group: any(e is own for e in group)):
            try:
                outcomes = _write_group([entry.write for entry in group])
            except Exception as error:
                if len(group) == 1 and group[0] is own:
                    raise
                if len(group) > 1:
                    logger.warning(
                        "Writing %d job outcomes together failed (%s); writing each alone.",
                        len(group),
                        error,
                    )
                continue
            for entry, outcome in zip(group, outcomes, strict=True):
                entry.outcome = outcome
                entry.state = _DONE
            self._count(len(group), 1)

    def _count(self, writes: int, transactions: int) -> None:
        with self._turn:
            self.writes += writes
            self.transactions += transactions


def _write_group(writes: Sequence[FinishWrite]) -> list[Finished | None]:
    if len(writes) == 1:
        return [job_writes.finish_one(writes[0])]
    return job_writes.finish_many(writes)


#: The process's group commit: every thread of a process that finishes jobs shares it.
BATCHES = FinishBatches()


def finish(job_id: str, attempt: int, run_seconds: float | None, **changes: Any) -> Finished | None:
    """`job_writes.finish_one`, committed together with the finishes other threads of this
    process make at the same time (`FinishBatches`)."""
    return BATCHES.finish(FinishWrite(job_id, attempt, run_seconds, changes))
