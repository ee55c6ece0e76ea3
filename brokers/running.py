"""What a worker process runs right now: one `RunningJobs` per broker, shared by its middleware.

`JobStatus` adds a job when it marks it running in the store and removes it once its outcome
is recorded; in between, the other middleware find it here instead of keeping their own
lists: the worker registry beats for it and releases it at shutdown, cancellation interrupts
its thread and calls its cancel hooks, progress hangs its throttled writer on it. Code running
in the job's thread reaches its own entry through `current_job()`, the way Dramatiq's
`CurrentMessage` hands an actor its message; that is how an actor registers a hook that kills
the subprocess it waits on, without the brokers knowing what a subprocess is.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq

#: `(progress, message)`: what `report_progress` passes on to the job's progress writer.
ProgressCallback = Callable[[float | None, str | None], None]

_current = threading.local()


class RunningJob:
    """One job this process runs: which job, which message and attempt, which thread.

    The flags and hooks are set by the middleware and the actor while it runs; `lock` guards
    the flags a watcher thread reads (`interrupted`, `finishing`) and the hooks.
    """

    def __init__(
        self, job_id: str, message: dramatiq.Message, *, attempt: int, thread_id: int
    ) -> None:
        self.job_id = job_id
        self.message = message
        self.attempt = attempt
        self.thread_id = thread_id
        #: `time.monotonic()` when the attempt started: its run time is measured from here.
        self.started = time.monotonic()
        #: The fields every log line about the job carries (`job_id`, `trace_id`,
        #: `worker_id`), for lines written from other threads (set by `JobStatus`).
        self.log_fields: dict[str, object] = {"job_id": job_id}
        self.lock = threading.Lock()
        #: Cancellation interrupted the job's thread.
        self.interrupted = False
        #: The actor has returned and its outcome is being recorded: no interrupt may land in
        #: the thread any more, and a shutdown must not release the job (set by
        #: `Cancellation`, whose after-hook runs first).
        self.finishing = False
        #: Where `report_progress` sends the job's progress (set by `JobProgress`).
        self.on_progress: ProgressCallback | None = None
        #: Where the job's log lines go (set by `JobLogs`; takes a `storage.job_logs.LogEntry`).
        self.on_log: Callable[[Any], None] | None = None
        #: Whose job it is, when the process cannot read the store (a remote worker).
        self.owner: str | None = None
        self._cancel_hooks: list[Callable[[], object]] = []

    def __repr__(self) -> str:
        return f"<RunningJob {self.job_id} attempt={self.attempt} thread={self.thread_id}>"

    @contextlib.contextmanager
    def on_cancel(self, hook: Callable[[], object]) -> Iterator[None]:
        """While the block runs, cancelling this job also calls `hook` (from another thread).

        For what a thread exception cannot stop: a subprocess the job waits on, a blocking
        call. The hook must be safe to call at any moment of the block.
        """
        with self.lock:
            self._cancel_hooks.append(hook)
        try:
            yield
        finally:
            with self.lock:
                self._cancel_hooks.remove(hook)

    def cancel_hooks(self) -> list[Callable[[], object]]:
        with self.lock:
            return list(self._cancel_hooks)


class RunningJobs:
    """The jobs this worker process runs, by job id.

    `start` and `finish` are called in the job's own worker thread; everything else may be
    called from any thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, RunningJob] = {}

    def start(self, job_id: str, message: dramatiq.Message, *, attempt: int) -> RunningJob:
        """Record that the calling thread now runs `attempt` of `job_id`."""
        job = RunningJob(job_id, message, attempt=attempt, thread_id=threading.get_ident())
        left_behind = current_job()
        with self._lock:
            # A thread runs one job at a time: one it never finished (its after-hooks were cut
            # short) is over.
            if left_behind is not None and self._jobs.get(left_behind.job_id) is left_behind:
                del self._jobs[left_behind.job_id]
            self._jobs[job_id] = job
        _current.job = job
        return job

    def finish(self, job_id: str) -> None:
        """The calling thread is done with `job_id`. A thread that never started it (a skipped
        duplicate delivery of a job another thread runs) changes nothing."""
        if getattr(_current, "job", None) is not None and _current.job.job_id == job_id:
            _current.job = None
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None and job.thread_id == threading.get_ident():
                del self._jobs[job_id]

    def get(self, job_id: str) -> RunningJob | None:
        with self._lock:
            return self._jobs.get(job_id)

    def snapshot(self) -> list[RunningJob]:
        """The jobs running now, oldest first."""
        with self._lock:
            return list(self._jobs.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)


def current_job() -> RunningJob | None:
    """The job the calling worker thread runs, or None outside a job."""
    return getattr(_current, "job", None)
