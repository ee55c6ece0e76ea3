"""A remote worker's job logs: the lines a local worker keeps (`brokers.job_logs`), posted to
`POST /api/v1/jobs/{id}/logs` instead of appended to the store.

The same `LogBuffer` holds a job's lines and hands them on in batches, every
`LOG_FLUSH_SECS` while the job runs and once more before its outcome is reported, so a
finished job's log is complete once a client sees it finished. `LogSender` is its `write`:
it makes each line what the server accepts (text every store can hold, cut to the longest
line kept) and splits a batch into requests the server takes (at most `MAX_LOG_LINES`
lines, and well under its `server.max_body_size`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator

from skillq.brokers.job_logs import worker_calls
from skillq.client.worker import WorkerClient
from skillq.errors import Conflict, NotFound
from skillq.jobs.fields import iso
from skillq.jobs.logs import SOURCES
from skillq.jobs.remote_reports import MAX_LOG_LINES
from skillq.storage.job_logs import MAX_LINE_CHARS, LogEntry, capped, readable

logger = logging.getLogger(__name__)

#: How often, in seconds, a remote worker posts its running jobs' new lines.
LOG_FLUSH_SECS = 1.0
#: The most JSON, in bytes, one log request carries (less when the server takes less).
MAX_BATCH_BYTES = 256 * 1024


def line_of(entry: LogEntry) -> dict[str, str]:
    """`entry` as the server accepts it: a source of its list (another is a `log` line)."""
    return {
        "at": iso(entry.at) or "",
        "source": entry.source if entry.source in SOURCES else "log",
        "level": readable(entry.level)[:16],
        "text": capped(readable(entry.text), MAX_LINE_CHARS),
    }


def batches(lines: list[dict[str, str]], max_bytes: int) -> Iterator[list[dict[str, str]]]:
    """`lines` in order, in runs of at most `MAX_LOG_LINES` lines and `max_bytes` of JSON
    (a line longer than that alone goes in a run of its own)."""
    batch: list[dict[str, str]] = []
    size = 0
    for line in lines:
        line_bytes = len(json.dumps(line, ensure_ascii=False).encode()) + 1
        if batch and (size + line_bytes > max_bytes or len(batch) >= MAX_LOG_LINES):
            yield batch
            batch, size = [], 0
        batch.append(line)
        size += line_bytes
    if batch:
        yield batch


class LogSender:
    """Posts one attempt's log lines to the API: the `write` of the job's `LogBuffer`.

    A refusal that the job is no longer the worker's (409, 404) calls `on_lost` and drops
    the lines, as the server would; any other failure (the API away past the client's
    retries) drops them with a warning: a job's log never fails the job.
    """

    def __init__(
        self,
        client: WorkerClient,
        job_id: str,
        attempt: int,
        *,
        max_batch_bytes: int,
        on_lost: Callable[[str], object],
    ) -> None:
        self.client = client
        self.job_id = job_id
        self.attempt = attempt
        self.max_batch_bytes = max_batch_bytes
        self.on_lost = on_lost

    def __call__(self, entries: list[LogEntry]) -> None:
        lines = [line_of(entry) for entry in entries]
        sent = 0
        try:
            for batch in batches(lines, self.max_batch_bytes):
                with worker_calls():
                    self.client.logs(self.job_id, self.attempt, batch)
                sent += len(batch)
        except (Conflict, NotFound):
            self.on_lost(self.job_id)
        except Exception as error:
            logger.warning(
                "Dropped %d log lines of job %s: %s", len(lines) - sent, self.job_id, error
            )
