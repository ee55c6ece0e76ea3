"""`skillq worker --remote URL`: a worker that reaches only the API, over HTTP.

It runs the same actors as a local worker (`skillq.actors`, configured from this machine's
settings for skills, sandbox and logging) with the same semantics, provided here instead of
by the broker middleware, which would need the store and the broker:

- progress: `report_progress` goes to `POST /api/v1/jobs/{id}/progress`, throttled by
  the local workers' `brokers.progress.ProgressReporter` (the latest value is kept and sent
  when the job ends);
- logs: the lines a local worker keeps (the job thread's log records, its tool's stderr,
  its error) go in batches to `POST /api/v1/jobs/{id}/logs` (`skillq.jobs.remote_logs`),
  the last before the outcome report;
- cancellation: a beat every `min(workers.heartbeat_secs, 0.5)` seconds while jobs run; the
  answer names the jobs a client cancelled, interrupted by the local workers' own
  `brokers.cancellation.interrupt` (a `JobCancelled` in the thread, the job's cancel hooks
  called), and those whose lease was
  lost, stopped without reporting;
- time limits: the server's (the message's, the job type's, else its
  `workers.job_timeout_secs`), enforced here with `TimeLimitExceeded` as dramatiq does;
- retries: the worker reports the failure, the server decides (`skillq.jobs.remote_reports`);
  it only says when the actor's rules forbid one (a time limit, an exception in `throws`).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import threading
import time
from typing import Any

import dramatiq
from dramatiq.errors import ActorNotFound
from dramatiq.middleware import TimeLimitExceeded
from dramatiq.threading import raise_thread_exception

from skillq.brokers.cancellation import JobCancelled, clear_pending_exception, interrupt
from skillq.brokers.job_logs import LogBuffer, RunningLogs, error_entry, worker_calls
from skillq.brokers.job_status import (
    ATTEMPT_OPTION,
    CANCELLED_OPTION,
    JOB_ID_OPTION,
    LAST_ATTEMPT_OPTION,
    describe_error,
)
from skillq.brokers.progress import ProgressReporter
from skillq.brokers.running import RunningJob, RunningJobs
from skillq.client.worker import WorkerClient
from skillq.errors import Conflict, Forbidden, NotFound, Unauthorized
from skillq.jobs.remote_logs import LOG_FLUSH_SECS, MAX_BATCH_BYTES, LogSender

logger = logging.getLogger(__name__)

#: Seconds one fetch long-polls; short enough for a prompt shutdown.
FETCH_WAIT_SECS = 10.0
#: The longest gap between two beats while jobs run: cancellation lands within about this.
BUSY_BEAT_SECS = 0.5
#: The shortest gap, in seconds, between two progress reports of one job.
PROGRESS_INTERVAL_SECS = 0.25


class RemoteRunner:
    """Registers with the API, then fetches and runs jobs on `threads` threads.

    Parameters:
      client(WorkerClient): The connection to the API, with the worker token.
      broker(dramatiq.Broker): Where the actors (job types) are declared.
      threads(int): Jobs run at once.
      capabilities(list[str] | None): What it declares (default: all its token allows).
      skills(list[str] | None): The skills it runs for `execute_skill` (default: any).
    """

    def __init__(
        self,
        client: WorkerClient,
        broker: dramatiq.Broker,
        *,
        threads: int = 1,
        capabilities: list[str] | None = None,
        skills: list[str] | None = None,
    ) -> None:
        self.client = client
        self.broker = broker
        self.threads = threads
        self.capabilities = capabilities
        self.skills = skills
        self.running = RunningJobs()
        self.lost: set[str] = set()
        self.stopping = threading.Event()
        self.heartbeat_secs = 2.0
        self.logs = RunningLogs(LOG_FLUSH_SECS)
        #: A job's kept log and the largest request body: the server's, once registered.
        self.max_log_bytes = 1_048_576
        self.max_log_batch_bytes = MAX_BATCH_BYTES
        #: Why the API stopped answering this worker, if it did (the process then fails).
        self.refused: Exception | None = None

    def run(self, grace_secs: float = 30.0) -> None:
        fields: dict[str, Any] = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "threads": self.threads,
        }
        if self.capabilities is not None:
            fields["capabilities"] = self.capabilities
        if self.skills is not None:
            fields["skills"] = self.skills
        answer = self.client.register(**fields)
        self.heartbeat_secs = float(answer["heartbeat_secs"])
        self.max_log_bytes = int(answer["max_log_bytes"])
        self.max_log_batch_bytes = min(MAX_BATCH_BYTES, int(answer["max_body_size"]) // 2)
        workers = [
            threading.Thread(target=self._work, name=f"skillq-remote-{n}", daemon=True)
            for n in range(self.threads)
        ]
        beater = threading.Thread(target=self._beat, name="skillq-remote-beat", daemon=True)
        beater.start()
        for worker in workers:
            worker.start()
        print(
            f"Remote worker {answer['worker_id']} is ready: queues {answer['queues']}", flush=True
        )
        self.stopping.wait()
        deadline = time.monotonic() + grace_secs
        for worker in workers:
            worker.join(timeout=max(0.0, deadline - time.monotonic()))
        self.logs.stop()

    def stop(self, *_: object) -> None:
        self.stopping.set()

    def _work(self) -> None:
        while not self.stopping.is_set():
            try:
                assignment = self.client.fetch(FETCH_WAIT_SECS)
            except (Unauthorized, Forbidden, NotFound) as error:
                # Token revoked, or this worker forgotten: nothing will change by waiting.
                logger.error("The API refuses this worker (%s); stopping.", error)
                self.refused = error
                self.stop()
                return
            except Exception as error:
                logger.warning("Could not fetch a job (%s); trying again.", error)
                self.stopping.wait(1.0)
                continue
            if assignment is not None:
                self._run(assignment)

    def _beat(self) -> None:
        while True:
            running = [job.job_id for job in self.running.snapshot() if not job.finishing]
            try:
                answer = self.client.heartbeat(running)
            except Exception as error:
                logger.warning("Could not beat (%s); trying again.", error)
            else:
                for job_id in answer["lost"]:
                    self.lose(job_id)
                for job_id in answer["cancel"]:
                    interrupt(self.running, job_id)
            busy = len(self.running) > 0
            time.sleep(min(self.heartbeat_secs, BUSY_BEAT_SECS) if busy else self.heartbeat_secs)

    def lose(self, job_id: str) -> None:
        """The server gave the job to someone else (our lease expired): stop, say nothing."""
        if self.running.get(job_id) is not None:
            logger.warning("Lost the lease of job %s; stopping it.", job_id)
            self.lost.add(job_id)
            interrupt(self.running, job_id)

    def _run(self, assignment: dict[str, Any]) -> None:
        job_id, attempt = assignment["job_id"], assignment["attempt"]
        message = dramatiq.Message(
            queue_name=assignment["queue"],
            actor_name=assignment["type"],
            args=tuple(assignment["args"]),
            kwargs=assignment["kwargs"],
            options={
                JOB_ID_OPTION: job_id,
                ATTEMPT_OPTION: attempt,
                LAST_ATTEMPT_OPTION: assignment["max_attempts"],
            },
        )
        try:
            actor = self.broker.get_actor(message.actor_name)
        except ActorNotFound:
            error = ("UnknownJobType", f"this remote worker has no job type {message.actor_name!r}")
            self._report(job_id, attempt, None, error, retryable=True, run_seconds=0.0)
            return
        sender = LogSender(
            self.client,
            job_id,
            attempt,
            max_batch_bytes=self.max_log_batch_bytes,
            on_lost=self.lose,
        )
        # Before the job is started: from then on a cancel may interrupt this thread.
        log = self.logs.open(job_id, LogBuffer(sender, self.max_log_bytes))
        job = self.running.start(job_id, message, attempt=attempt)
        job.owner = assignment["owner"]
        reporter = ProgressReporter(
            functools.partial(self._send_progress, job), PROGRESS_INTERVAL_SECS
        )
        job.on_progress = reporter
        job.on_log = log
        limit_ms = assignment["time_limit_ms"]
        timer = None
        if limit_ms:
            timer = threading.Timer(limit_ms / 1000, self._time_out, (job,))
            timer.daemon = True
            timer.start()
        started = time.monotonic()
        result: Any = None
        exception: BaseException | None = None
        try:
            try:
                result = actor.fn(*message.args, **message.kwargs)
            except BaseException as error:
                exception = error
            _close(job)
        except (JobCancelled, TimeLimitExceeded):
            _close(job)  # the interrupt landed after the actor returned
        finally:
            if timer is not None:
                timer.cancel()
            self.running.finish(job_id)
        run_seconds = time.monotonic() - started
        job.on_log = None
        if job_id in self.lost:
            self.lost.discard(job_id)
            self.logs.close(job_id, log, flush=False)
            return
        if exception is not None:
            log(error_entry(message, exception))
        self.logs.close(job_id, log)  # the last lines before the outcome
        reporter.flush()
        if exception is None:
            self._report(job_id, attempt, result, None, retryable=False, run_seconds=run_seconds)
            return
        cancelled = bool(message.options.get(CANCELLED_OPTION))
        error = describe_error(exception, limit_ms)
        if not cancelled:
            logger.error("Job %s failed: %s: %s", job_id, *error, exc_info=exception)
        retryable = not (cancelled or isinstance(exception, TimeLimitExceeded)) and _retryable(
            actor, exception, attempt
        )
        self._report(job_id, attempt, None, error, retryable=retryable, run_seconds=run_seconds)

    def _send_progress(self, job: RunningJob, progress: float | None, message: str | None) -> None:
        """One progress report; the answer also says whether a client cancelled the job, and
        a refusal that the job is no longer ours (409, 404) means its lease was lost. Sent
        from the job's thread, so what it logs is kept out of the job's log."""
        with worker_calls():
            try:
                cancel = self.client.progress(job.job_id, job.attempt, progress, message)
            except (Conflict, NotFound):
                self.lose(job.job_id)
                return
            except Exception:
                logger.warning("Could not report progress of job %s.", job.job_id)
                return
            if cancel:
                interrupt(self.running, job.job_id)

    def _time_out(self, job: RunningJob) -> None:
        with job.lock:
            if not job.finishing:
                raise_thread_exception(job.thread_id, TimeLimitExceeded)

    def _report(
        self,
        job_id: str,
        attempt: int,
        result: Any,
        error: tuple[str, str] | None,
        *,
        retryable: bool,
        run_seconds: float,
    ) -> None:
        try:
            if error is None:
                state = self.client.complete(job_id, attempt, result, run_seconds)
            else:
                state = self.client.fail(
                    job_id, attempt, error, retryable=retryable, run_seconds=run_seconds
                )
        except (Conflict, NotFound) as refused:
            logger.warning("The server refused the outcome of job %s: %s", job_id, refused)
            return
        except Exception:
            logger.exception(
                "Could not report the outcome of job %s; its lease will expire.", job_id
            )
            return
        logger.info("Job %s: %s (attempt %d).", job_id, state, attempt)


def _close(job: RunningJob) -> None:
    """No interrupt may reach the job's thread from now on."""
    with job.lock:
        job.finishing = True
        clear_pending_exception(job.thread_id)


def _retryable(actor: dramatiq.Actor, exception: BaseException, attempt: int) -> bool:
    """dramatiq's `Retries` rules the actor declares: `throws`, `retry_when`."""
    throws = actor.options.get("throws")
    if throws and isinstance(exception, throws):
        return False
    retry_when = actor.options.get("retry_when")
    if retry_when is not None:
        return bool(retry_when(attempt - 1, exception))
    return True


def run_remote_worker(
    url: str,
    token: str,
    *,
    threads: int,
    capabilities: list[str] | None,
    skills: list[str] | None,
) -> None:
    """The `skillq worker --remote` process: runs until SIGTERM or SIGINT."""
    from skillq import actors

    client = WorkerClient(url, token)
    runner = RemoteRunner(
        client, actors.broker, threads=threads, capabilities=capabilities, skills=skills
    )
    signal.signal(signal.SIGTERM, runner.stop)
    signal.signal(signal.SIGINT, runner.stop)
    try:
        runner.run(grace_secs=actors.settings.workers.shutdown_grace_secs)
    finally:
        client.close()
    if runner.refused is not None:
        raise runner.refused
