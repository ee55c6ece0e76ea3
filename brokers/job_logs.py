"""Keeps what a job prints: its log records, its skill tool's stderr, its error.

A `logging` handler on the root logger takes the records emitted in a thread that runs a
job (`current_job()`); `write_job_log` takes other lines (a skill tool's stderr, through
the callback the actor hands the sandbox); when the actor raises, the error and its
traceback are added. Lines wait in memory and are written in batches: a background thread
writes every `flush_secs`, so a running job's lines can be followed live, and the job's
thread writes the rest before its outcome is recorded, so a finished job's log is complete
once a client sees it finished. A job's log in the store is bounded by `max_bytes`, and so
is what waits in memory: a job logging in a hot loop costs memory and writes in proportion
to the bound, not to its output.

Records from dramatiq and peewee are left out (the worker's own failure report repeats the
traceback this middleware records, and query logs would log their own writes), as are this
module's warnings.
"""

from __future__ import annotations

import logging
import threading
import traceback
from dataclasses import dataclass, field
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


def write_job_log(text: str, *, source: str = "tool", level: str = "INFO") -> None:
    """Add a line to the log of the job the calling thread runs; outside a job, nothing."""
    job = current_job()
    if job is not None and job.on_log is not None:
        job.on_log(LogEntry(utcnow(), source, level, text))


@dataclass
class _JobLog:
    """One running job's lines not yet written, and where its kept log ends."""

    job_id: str
    max_bytes: int
    pending: list[LogEntry] = field(default_factory=list)
    pending_bytes: int = 0
    cursor: LogCursor | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Held while writing, so two writers of one job (the background thread and the job's
    #: own) cannot commit its lines out of order.
    write_lock: threading.Lock = field(default_factory=threading.Lock)

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
                self._write(entries)

    def _write(self, entries: list[LogEntry]) -> None:
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
        try:
            text = record.getMessage()
            if record.exc_info:
                text = f"{text}\n{self.formatter.formatException(record.exc_info)}"
        except Exception:  # a record whose arguments do not format: logging's own rule
            self.handleError(record)
            return
        job.on_log(LogEntry(utcnow(), "log", record.levelname, text))


class _Flusher:
    """Writes every running job's waiting lines every `interval_secs`."""

    def __init__(self, logs: dict[str, _JobLog], lock: threading.Lock, interval_secs: float):
        self.logs, self.lock, self.interval_secs = logs, lock, interval_secs
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="skillq-job-logs", daemon=True)

    def _run(self) -> None:
        while not self.stopped.wait(self.interval_secs):
            with self.lock:
                waiting = [log for log in self.logs.values() if log.pending]
            for log in waiting:
                log.flush()


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
        self._lock = threading.Lock()
        self._logs: dict[str, _JobLog] = {}
        self._flusher: _Flusher | None = None
        self._handler: _JobThreadHandler | None = None

    def _start(self) -> None:
        """The handler and the writer thread start with the first job, so a process that
        builds the broker only to send (the API) gets neither."""
        with self._lock:
            if self._flusher is not None:
                return
            self._handler = _JobThreadHandler()
            logging.getLogger().addHandler(self._handler)
            self._flusher = _Flusher(self._logs, self._lock, self.flush_secs)
            self._flusher.thread.start()

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        job = own_job(message)
        if job is None:
            return
        self._start()
        log = _JobLog(job.job_id, self.max_bytes)
        with self._lock:
            self._logs[job.job_id] = log
        job.on_log = log

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.Message,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        job = own_job(message)
        if job is None or not isinstance(job.on_log, _JobLog):
            return
        log, job.on_log = job.on_log, None
        if exception is not None:
            log(_error_entry(message, exception))
        with self._lock:
            if self._logs.get(job.job_id) is log:
                del self._logs[job.job_id]
        log.flush()

    after_skip_message = after_process_message

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        with self._lock:
            flusher, handler = self._flusher, self._handler
            self._flusher = self._handler = None
        if flusher is not None:
            flusher.stopped.set()
        if handler is not None:
            logging.getLogger().removeHandler(handler)


def _error_entry(message: dramatiq.Message, exception: BaseException) -> LogEntry:
    attempt = message.options.get(ATTEMPT_OPTION, "?")
    if message.options.get(CANCELLED_OPTION):
        return LogEntry(utcnow(), "error", "INFO", f"attempt {attempt} was cancelled")
    trace = "".join(traceback.format_exception(exception)).rstrip()
    return LogEntry(utcnow(), "error", "ERROR", f"attempt {attempt} failed:\n{trace}")
