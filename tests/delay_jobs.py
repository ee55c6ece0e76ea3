"""A job type for tests/test_delayed_jobs.py, loaded by worker processes through `[jobs] modules`.

It returns the wall-clock time it started at (UTC seconds since the epoch), read by the job
itself, so a test compares when it really ran with the `scheduled_for` it asked for.
"""

from __future__ import annotations

import time

import skillq


@skillq.job_type(queue="default", max_retries=0)
def clock(tag: str = "") -> dict:
    """Report when this job started."""
    return {"started": time.time(), "tag": tag}
