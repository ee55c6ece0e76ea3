"""Job types for tests/test_job_limits.py, loaded by worker processes through `[jobs] modules`.

Their queue is `$SKILLQ_TEST_LIMITS_QUEUE`, unique per test run, so workers of parallel runs
on the same Redis or RabbitMQ never take each other's messages. Each run appends `start` and
`end` lines (tag, pid, monotonic time: one clock for every process on the machine) to the
file it is given, so a test can tell how many overlapped and how often each ran.
"""

from __future__ import annotations

import os

import skillq
from tests.pool_jobs import _run

QUEUE = os.environ.get("SKILLQ_TEST_LIMITS_QUEUE", "limits")


@skillq.job_type(queue=QUEUE, max_concurrent=2, max_retries=2)
def limited_probe(record: str, tag: str, seconds: float = 0.1) -> dict:
    """At most two at once, by the decorator's option."""
    return _run(record, tag, seconds)


@skillq.job_type(queue=QUEUE, max_concurrent=1, max_retries=2)
def fair_probe(record: str, tag: str, seconds: float = 0.3) -> dict:
    """One at a time, so a backlog builds up faster than it drains."""
    return _run(record, tag, seconds)


@skillq.job_type(queue=QUEUE, max_retries=2)
def rated_probe(record: str, tag: str, seconds: float = 0.05) -> dict:
    """Rate-limited by the test's settings (`[job_types.rated_probe]`)."""
    return _run(record, tag, seconds)


@skillq.job_type(queue=QUEUE, max_retries=2)
def free_probe(record: str, tag: str, seconds: float = 0.05) -> dict:
    """No limit: must not wait behind the postponed ones."""
    return _run(record, tag, seconds)


@skillq.job_type(queue=QUEUE, max_retries=2)
def owned_probe(record: str, tag: str, seconds: float = 0.3) -> dict:
    """One per owner at once, by the test's settings (`[quotas.types.owned_probe]`)."""
    return _run(record, tag, seconds)
