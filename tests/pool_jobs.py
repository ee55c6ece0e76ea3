"""Job types for tests/test_pools.py, loaded by worker processes through `[jobs] modules`.

Each run appends `start` and `end` lines (tag, pid, monotonic time: one clock for every
process on the machine) to the file it is given, so a test can tell which jobs ran, how
often, and how many overlapped.
"""

from __future__ import annotations

import os
import time

import skillq


def _record(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())  # one write under O_APPEND: lines never mix
    finally:
        os.close(fd)


def _run(record: str, tag: str, seconds: float) -> dict:
    _record(record, f"start {tag} {os.getpid()} {time.monotonic()}")
    time.sleep(seconds)
    _record(record, f"end {tag} {os.getpid()} {time.monotonic()}")
    return {"tag": tag}


@skillq.job_type(queue="skill", max_retries=0)
def pool_probe(record: str, tag: str, seconds: float = 0.5) -> dict:
    """A short job on the skill queue."""
    return _run(record, tag, seconds)


@skillq.job_type(queue="index", max_retries=0)
def slow_index(record: str, tag: str, seconds: float = 60.0) -> dict:
    """A long job on the index queue."""
    return _run(record, tag, seconds)
