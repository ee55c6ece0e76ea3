"""A job type for tests/test_finish_kills.py, loaded by worker processes through `[jobs] modules`.

It waits for the file `go` in `folder`, then leaves a file named after itself there as the
last thing its body does: the test decides when the jobs' work ends, and knows when it did.
"""

from __future__ import annotations

import time
from pathlib import Path

import skillq


@skillq.job_type(queue="default", max_retries=3)
def marked(folder: str, name: str) -> dict:
    """Wait (at most a minute) for `folder`/go, then leave the file `name` in `folder`."""
    deadline = time.monotonic() + 60
    while not Path(folder, "go").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    Path(folder, name).touch()
    return {"name": name}
