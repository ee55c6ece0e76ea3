"""A job's kept log: appended in batches by the worker, read in pages by the API.

Each job's lines are numbered from 1 (`seq`), the cursor a reader pages and follows with
(`since`). The log is bounded per job: once its lines add up to more than `max_bytes` of
text, the oldest go, so what is kept is the tail, the part that explains how a job ended.

Hostile input: a job prints what it likes. Text is stored only in a form that reads back on
both stores (PostgreSQL refuses NUL and lone surrogates; SQLite takes them and fails later,
when the row is encoded), and each line is capped in length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import peewee

from skillq.storage.database import database_proxy
from skillq.storage.models import JobLogLine

#: The longest line kept, in characters; longer ones keep their head and tail.
MAX_LINE_CHARS = 16_384
#: The largest line number a reader may name (`seq` is a 32-bit column on PostgreSQL).
MAX_SEQ = 2**31 - 1
#: The most lines one read returns.
MAX_READ_LINES = 1000
_CUT_MARK = " […{} characters cut…] "


@dataclass(frozen=True)
class LogEntry:
    """A line to append: when, from where (`log`, `tool`, `error`), how bad, what."""

    at: datetime
    source: str
    level: str
    text: str


@dataclass
class LogCursor:
    """What a writer knows of a job's kept log between appends: the next `seq` and the
    kept bytes. Keeping it saves a query per append; None makes `append` read it."""

    next_seq: int
    kept_bytes: int


@dataclass(frozen=True)
class LogPage:
    lines: list[JobLogLine]
    #: Pass as `since` to read what follows (the last line's `seq`, or `since` when none).
    next_since: int


def readable(text: str) -> str:
    """`text` as something every store can hold and give back: NUL and lone surrogates
    (from `surrogateescape` decoding, or a `\\ud800` in JSON) become U+FFFD."""
    text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = "".join("\ufffd" if "\ud800" <= char <= "\udfff" else char for char in text)
    return text


def capped(text: str, max_chars: int) -> str:
    """At most `max_chars` characters (about): the head and the tail, with the cut marked."""
    if len(text) <= max_chars:
        return text
    half = max(max_chars // 2 - len(_CUT_MARK), 0)
    cut = len(text) - 2 * half
    return text[:half] + _CUT_MARK.format(cut) + text[len(text) - half :]


def _cap_bytes(text: str, max_bytes: int) -> str:
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    return encoded[len(encoded) - max_bytes :].decode("utf-8", "ignore")


def read_cursor(job_id: str) -> LogCursor:
    """Where a job's kept log ends (one indexed query)."""
    row = (
        JobLogLine.select(
            peewee.fn.COALESCE(peewee.fn.MAX(JobLogLine.seq), 0),
            peewee.fn.COALESCE(peewee.fn.SUM(JobLogLine.size), 0),
        )
        .where(JobLogLine.job == job_id)
        .tuples()
        .get()
    )
    return LogCursor(next_seq=int(row[0]) + 1, kept_bytes=int(row[1]))


def append(
    job_id: str,
    entries: Sequence[LogEntry],
    *,
    max_bytes: int,
    cursor: LogCursor | None = None,
) -> LogCursor:
    """Append `entries` to a job's log in one transaction, then drop its oldest lines while
    it holds more than `max_bytes`; returns the cursor to pass to the next append.

    Raises `peewee.IntegrityError` when the job is gone (purged) or another writer took the
    same `seq` (read the cursor again)."""
    with _write_transaction():
        cursor = cursor or read_cursor(job_id)
        rows = []
        for entry in entries:
            text = _cap_bytes(capped(readable(entry.text), MAX_LINE_CHARS), max_bytes)
            size = len(text.encode("utf-8"))
            rows.append(
                {
                    "job": job_id,
                    "seq": cursor.next_seq + len(rows),
                    "at": entry.at,
                    "source": readable(entry.source)[:16],
                    "level": readable(entry.level)[:16],
                    "text": text,
                    "size": size,
                }
            )
            cursor.kept_bytes += size
        if rows:
            JobLogLine.insert_many(rows).execute()
            cursor.next_seq += len(rows)
        if cursor.kept_bytes > max_bytes:
            cursor.kept_bytes -= _drop_oldest(job_id, cursor.kept_bytes - max_bytes)
    return cursor


def _write_transaction() -> peewee._atomic:
    """On SQLite, take the write lock at BEGIN: a transaction that reads first and writes
    later fails at once ("database is locked") when another writer committed in between,
    without waiting out the busy timeout."""
    if isinstance(database_proxy.obj, peewee.SqliteDatabase):
        return database_proxy.atomic(lock_type="IMMEDIATE")
    return database_proxy.atomic()


def _drop_oldest(job_id: str, excess: int) -> int:
    """Delete a job's oldest lines until at least `excess` bytes are gone; the bytes gone."""
    dropped, last = 0, None
    oldest = (
        JobLogLine.select(JobLogLine.seq, JobLogLine.size)
        .where(JobLogLine.job == job_id)
        .order_by(JobLogLine.seq)
        .tuples()
    )
    for seq, size in oldest.iterator():
        dropped, last = dropped + size, seq
        if dropped >= excess:
            break
    if last is not None:
        JobLogLine.delete().where((JobLogLine.job == job_id) & (JobLogLine.seq <= last)).execute()
    return dropped


def read(job_id: str, *, since: int = 0, limit: int = MAX_READ_LINES) -> LogPage:
    """A job's kept lines after `since`, oldest first, at most `limit`."""
    limit = max(1, min(limit, MAX_READ_LINES))
    query = (
        JobLogLine.select()
        .where((JobLogLine.job == job_id) & (JobLogLine.seq > since))
        .order_by(JobLogLine.seq)
        .limit(limit)
    )
    lines = list(query)
    return LogPage(lines, lines[-1].seq if lines else since)


def delete_for_jobs(job_ids: peewee.Query) -> int:
    """Drop the logs of the jobs `job_ids` selects (the foreign key cascades too; this also
    covers a SQLite connection opened without `foreign_keys`)."""
    return JobLogLine.delete().where(JobLogLine.job.in_(job_ids)).execute()
