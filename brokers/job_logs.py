"""Keeps what a job prints: its log records, its skill tool's stderr, its error.

A `logging` handler on the root logger takes the records emitted in a thread that runs a
job (`current_job()`); `write_job_log` takes other lines (a skill tool's stderr, through
the callback the actor hands the sandbox); when the actor raises, the error and its
traceback are added. Lines wait in memory (`LogBuffer`) and are written in batches: a
background thread writes every `flush_secs`, so a running job's lines can be followed live,
and the job's thread writes the rest before its outcome is recorded, so a finished job's
log is complete once a client sees it finished. A job's log in the store is bounded by
`max_bytes`, and so is what waits in memory: a job logging in a hot loop costs memory and
writes in proportion to the bound, not to its output.

Where a batch goes is the buffer's `write`: a local worker appends to the store
(`JobLogs`), a remote worker posts to the API (`skillq.jobs.remote_runner`); both keep their
running jobs' buffers in a `RunningLogs`.

Records from dramatiq and peewee are left out (the worker's own failure report repeats the
traceback this middleware records, and query logs would log their own writes), as are this
module's warnings and whatever a worker logs inside `worker_calls()` (a remote worker's
HTTP reports, sent from the job's thread).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import peewee
from dramatiq.middleware import Middleware

from skillq.brokers.job_messages import own_job
from skillq.brokers.job_status import ATTEMPT_OPTION, CANCELLED_OPTION
from skillq.brokers.running import current_job
from skillq.storage import job_logs
from skillq.storage.database import STORE_OUTAGES, database_proxy
from skillq.storage.job_logs import LogCursor, LogEntry
from skillq.storage.models import utcnow

logger = logging.getLogger(__name__)

#: Loggers whose records never go into a job's log.
_LEFT_OUT = ("dramatiq", "peewee", __name__)
#: Set in a thread while the worker itself works there (`worker_calls`).
_worker_calls = threading.local()


def write_job_log(text: str, *, source: str = "tool", level: str = "INFO") -> None:
    """Add a line to the log of the job the calling thread runs; outside a job, nothing."""
    job = current_job()
    if job is not None and job.on_log is not None:
        job.on_log(LogEntry(utcnow(), source, level, text))


@contextlib.contextmanager
def worker_calls() -> Iterator[None]:
    """Records logged in the block are the worker's own, not the job's, though the job's
    thread logs them: a remote worker's progress report goes out from there, and its HTTP
    client's lines would otherwise fill the job's log."""
    before = getattr(_worker_calls, "active", False)
    _worker_calls.active = True
    try:
        yield
    finally:
        _worker_calls.active = before


class LogBuffer:
    """One running job's lines not yet written, handed to `write` in batches by `flush`.

    What waits is bounded by `max_bytes` of text (the oldest lines go first), as the kept
    log is. `write` is called by one thread at a time, in the order the lines came.
    """

    def __init__(self, write: Callable[[list[LogEntry]], object], max_bytes: int) -> None:
        self.write = write
        self.max_bytes = max_bytes
        self.pending: list[LogEntry] = []
        self.pending_bytes = 0
        self.lock = threading.Lock()
        #: Held while writing, so two writers of one job (the background thread and the
        #: job's own) cannot send its lines out of order.
        self.write_lock = threading.Lock()

    def __call__(self, entry: LogEntry) -> None:
        with self.lock:
            self.pending.append(entry)
            self.pending_bytes += len(entry.text)
            while self.pending_bytes > self.max_bytes and len(self.pending) > 1:
                self.pending_bytes -= len(self.pending.pop(0).text)

    def flush(self) -> None:
        with self.write_lock:
            with self.lock:
                entries, self.pending, self.pending_bytes = self.pending, [], 0
            if entries:
                self.write(entries)


class StoreLogWriter:
    """Appends one job's batches to the store, keeping where its log ends between appends.

    A batch that cannot be written (the store is down, the job purged) is dropped with a
    warning: a job's log never fails the job.
    """

    def __init__(self, job_id: str, max_bytes: int) -> None:
        self.job_id = job_id
        self.max_bytes = max_bytes
        self.cursor: LogCursor | None = None

    def __call__(self, entries: list[LogEntry]) -> None:
        closed = database_proxy.is_closed()
        try:
            for _ in range(2):
                try:
                    self.cursor = job_logs.append(
                        self.job_id, entries, max_bytes=self.max_bytes, cursor=self.cursor
                    )
                    return
                except peewee.IntegrityError:
                    # Another writer took these numbers, or the job is gone: look again.
                    self.cursor = None
            logger.warning("Dropped %d log lines of job %s.", len(entries), self.job_id)
        except STORE_OUTAGES as error:
            self.cursor = None
            logger.warning("Dropped %d log lines of job %s: %s", len(entries), self.job_id, error)
        finally:
            if closed:
                database_proxy.close()


class _JobThreadHandler(logging.Handler):
    """Sends a record emitted in a job's thread to that job's log."""

    def __init__(self) -> None:
        super().__init__()
        self.formatter = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:
        job = current_job()
        if job is None or job.on_log is None or record.name.startswith(_LEFT_OUT):
            return
        if getattr(_worker_calls, "active", False):
            return
        try:
            text = record.getMessage()
            if record.exc_info:
                text = f"{text}\n{self.formatter.formatException(record.exc_info)}"
        except Exception:  # a record whose arguments do not format: logging's own rule
            self.handleError(record)
            return
        job.on_log(LogEntry(utcnow(), "log", record.levelname, text))


class RunningLogs:
    """The buffers of the jobs one worker process runs, flushed every `flush_secs` by a
    thread of its own.

    The logging handler and the thread start with the first job, so a process that builds
    the broker only to send (the API) gets neither; `stop` removes both.
    """

    def __init__(self, flush_secs: float) -> None:
        self.flush_secs = flush_secs
        self._lock = threading.Lock()
        self._buffers: dict[str, LogBuffer] = {}
        self._handler: _JobThreadHandler | None = None
        self._stopped: threading.Event | None = None

    def open(self, job_id: str, buffer: LogBuffer) -> LogBuffer:
        """Follow `job_id`'s lines in `buffer` (hang it on the job's `on_log`)."""
        with self._lock:
            if self._handler is None:
                self._start()
            self._buffers[job_id] = buffer
        return buffer

    def close(self, job_id: str, buffer: LogBuffer, *, flush: bool = True) -> None:
        """The job ended: write what waits (unless `flush` is false: it is no longer ours)."""
        with self._lock:
            if self._buffers.get(job_id) is buffer:
                del self._buffers[job_id]
        if flush:
            buffer.flush()

    def stop(self) -> None:
        with self._lock:
            handler, stopped = self._handler, self._stopped
            self._handler = self._stopped = None
        if stopped is not None:
            stopped.set()
        if handler is not None:
            logging.getLogger().removeHandler(handler)

    def _start(self) -> None:
        self._handler = _JobThreadHandler()
        logging.getLogger().addHandler(self._handler)
        self._stopped = threading.Event()
        thread = threading.Thread(
            target=self._flush_every, args=(self._stopped,), name="skillq-job-logs", daemon=True
        )
        thread.start()

    def _flush_every(self, stopped: threading.Event) -> None:
        while not stopped.wait(self.flush_secs):
            with self._lock:
                waiting = [buffer for buffer in self._buffers.values() if buffer.pending]
            for buffer in waiting:
                buffer.flush()


class JobLogs(Middleware):
    """Keeps each job's log in the store (`skillq.storage.job_logs`).

    Parameters:
      max_bytes(int): A job's kept log, in bytes of text; the oldest lines go past it
        (`jobs.max_log_bytes`).
      flush_secs(float): How often, in seconds, running jobs' lines are written.
    """

    def __init__(self, *, max_bytes: int = 1_048_576, flush_secs: float = 0.5) -> None:
        self.max_bytes = max_bytes
        self.flush_secs = flush_secs
        self._running = RunningLogs(flush_secs)

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        job = own_job(message)
        if job is None:
            return
        writer = StoreLogWriter(job.job_id, self.max_bytes)
        job.on_log = self._running.open(job.job_id, LogBuffer(writer, self.max_bytes))

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.Message,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        job = own_job(message)
        if job is None or not isinstance(job.on_log, LogBuffer):
            return
        log, job.on_log = job.on_log, None
        if exception is not None:
            log(error_entry(message, exception))
        self._running.close(job.job_id, log)

    after_skip_message = after_process_message

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._running.stop()


def error_entry(message: dramatiq.Message, exception: BaseException) -> LogEntry:
    """The line that ends a failed attempt's log: its traceback, or that it was cancelled."""
    attempt = message.options.get(ATTEMPT_OPTION, "?")
    if message.options.get(CANCELLED_OPTION):
        return LogEntry(utcnow(), "error", "INFO", f"attempt {attempt} was cancelled")
    trace = "".join(traceback.format_exception(exception)).rstrip()
    return LogEntry(utcnow(), "error", "ERROR", f"attempt {attempt} failed:\n{trace}")
