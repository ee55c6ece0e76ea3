"""Slots handed over across processes: three worker processes on one store (SQLite and
PostgreSQL), each with its own in-memory broker and four threads, run one backlog of a type
limited to 2 at once. A job's end hands its slot to the next postponed job, whichever
process postponed it, and the process that ended the job sends it and runs it. The limit
holds throughout, every job runs once in its first attempt, none is left waiting, no slot is
left held, and some jobs did run in another process than the one they were submitted to.
And in one worker: a woken job, which starts on its reservation without its job being read,
is skipped if it was cancelled while it waited, and the slot goes on to the next.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import threading
import time
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from skillq.brokers.factory import job_middleware
from skillq.brokers.job_limits import limit_from
from skillq.jobs.coordinator import JobCoordinator
from skillq.jobs.types import JobTypeOptions
from skillq.settings import Settings, StorageSettings, WorkerSettings
from skillq.storage import JobState, bind_database, limit_usage, open_database
from skillq.storage.database import connection
from skillq.storage.limit_tables import PostponedJob
from skillq.storage.models import Job
from tests.support import wait_for
from tests.test_pools import max_overlap, runs

PROCESSES, JOBS_EACH, LIMIT = 3, 8, 2
WORKERS = WorkerSettings(max_retries=0, retry_delay_secs=0, heartbeat_secs=0.5)


def _note(record: str, kind: str, tag: str) -> None:
    with open(record, "a") as lines:
        lines.write(f"{kind} {tag} {os.getpid()} {time.monotonic()}\n")


def _finished() -> int:
    with connection():
        done = Job.state.in_([JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED])
        return Job.select().where((Job.type == "handed") & done).count()


def _worker_process(store: StorageSettings, index: int, record: str, ready: Any) -> None:
    """Submit this process's share to its own broker, wait for the others, then run jobs
    until the whole backlog has finished."""
    bind_database(open_database(store.backend, **store.database_args()))
    limits = {"handed": limit_from(max_concurrent=LIMIT)}
    broker = StubBroker(middleware=[*job_middleware(WORKERS, limits=limits), JobTypeOptions()])

    @dramatiq.actor(broker=broker, queue_name="default", params_schema={"type": "object"})
    def handed(tag: str) -> None:
        _note(record, "start", tag)
        time.sleep(0.03)
        _note(record, "end", tag)

    coordinator = JobCoordinator(broker, Settings(workers=WORKERS))
    for n in range(JOBS_EACH):
        coordinator.submit_job({"type": "handed", "params": {"tag": f"p{index}-{n}"}})
    ready.wait(timeout=120)  # every share queued before anyone starts: they all compete
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=20)
    worker.start()
    deadline = time.monotonic() + 120
    while _finished() < PROCESSES * JOBS_EACH and time.monotonic() < deadline:
        time.sleep(0.02)
    worker.stop()
    broker.close()


@pytest.mark.timeout(300)
def test_slots_handed_over_across_processes_keep_the_limit(
    store: StorageSettings, tmp_path: Path
) -> None:
    record = tmp_path / "runs.log"
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(PROCESSES)
    processes = [
        context.Process(target=_worker_process, args=(store, index, str(record), ready))
        for index in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=240)
    assert [process.exitcode for process in processes] == [0] * PROCESSES

    with connection():
        found = list(Job.select(Job.state, Job.attempts).where(Job.type == "handed").tuples())
        left = limit_usage.usage().get("handed", limit_usage.Usage())
    assert found == [(JobState.COMPLETED.value, 1)] * PROCESSES * JOBS_EACH
    assert (left.running, left.postponed) == (0, 0)
    starts = [(tag, pid, at) for kind, tag, pid, at in runs(record) if kind == "start"]
    assert sorted(tag for tag, _, _ in starts) == sorted(
        f"p{index}-{n}" for index in range(PROCESSES) for n in range(JOBS_EACH)
    )
    ends = {tag: at for kind, tag, _, at in runs(record) if kind == "end"}
    assert max_overlap([(at, ends[tag]) for tag, _, at in starts]) == LIMIT
    # Some jobs ran in another process than their own: a slot freed in one process went to
    # a job another had postponed. (A process that took no slot at first may run none: the
    # jobs a process wakes go to its own broker here, where a shared one would spread them.)
    submitter = {f"p{index}": process.pid for index, process in enumerate(processes)}
    assert any(pid != submitter[tag.split("-")[0]] for tag, pid, _ in starts)


def test_a_job_cancelled_while_it_waits_hands_its_slot_on(store: StorageSettings) -> None:
    limits = {"gated": limit_from(max_concurrent=1)}
    # A lease far longer than the wait below: a slot not given back would not free in time.
    workers = dataclasses.replace(WORKERS, dead_after_secs=600)
    broker = StubBroker(middleware=[*job_middleware(workers, limits=limits), JobTypeOptions()])
    gate, ran = threading.Event(), []

    @dramatiq.actor(broker=broker, queue_name="default", params_schema={"type": "object"})
    def gated(tag: str) -> None:
        ran.append(tag)
        if len(ran) == 1:  # whichever of the three took the slot (four threads race for it)
            gate.wait(timeout=60)

    coordinator = JobCoordinator(broker, Settings(workers=workers))
    ids = {
        tag: coordinator.submit_job({"type": "gated", "params": {"tag": tag}}).job.id
        for tag in ("a", "b", "c")
    }
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=20)
    worker.start()
    try:

        def waiting() -> int:
            with connection():
                return limit_usage.usage().get("gated", limit_usage.Usage()).postponed

        wait_for(lambda: ran and waiting() == 2, what="one job running, two postponed")
        with connection():
            # The slot goes next to the job postponed first: that one is cancelled.
            doomed = PostponedJob.select().order_by(PostponedJob.id).first().job_id
        first = ids[ran[0]]
        (last,) = set(ids.values()) - {first, doomed}
        coordinator.cancel_job(doomed)
        gate.set()  # the first ends: its slot goes to `doomed`, which must not run

        def states() -> list[str]:
            with connection():
                found = dict(Job.select(Job.id, Job.state).where(Job.type == "gated").tuples())
            return [found[job_id] for job_id in (first, doomed, last)]

        wait_for(lambda: states()[2] == JobState.COMPLETED.value, what="the last job to run")
    finally:
        gate.set()
        worker.stop()
        broker.close()
    tag_of = {job_id: tag for tag, job_id in ids.items()}
    assert ran == [tag_of[first], tag_of[last]]
    done, cancelled = JobState.COMPLETED.value, JobState.CANCELLED.value
    assert states() == [done, cancelled, done]
    with connection():
        assert "gated" not in limit_usage.usage()  # no slot held, nothing waits
