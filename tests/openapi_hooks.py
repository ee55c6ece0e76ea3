"""Schemathesis hooks for tests/test_openapi.py (in process, and for the schemathesis command
through `SCHEMATHESIS_HOOKS`).

A submission's `run_at` is valid only inside a window that moves with the clock (at most 60 s
ago, at most `[jobs] max_delay_hours` ahead), which no static schema can say; generated
date-times fall anywhere in years 0001-9999. So every RFC 3339 `run_at` a case carries is
moved into the window before the call: a valid case stays valid (and is then accepted), an
invalid one stays invalid for whatever else made it so. A batch's items likewise.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import schemathesis

#: `[jobs] max_batch_jobs` of every API the fuzzers run against: the document's `maxItems`
#: follows it, so a full batch and one item over are fuzzed as with the default 1,000, at a
#: fraction of the cost (full batches of many jobs were most of the runs' time).
FUZZED_BATCH_JOBS = 10

_RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)")


def keep_run_at_in_window(case: Any) -> None:
    body = case.body
    items = body.get("jobs") if isinstance(body, dict) else None
    # A batch's items are submissions too.
    for submission in [body, *(items if isinstance(items, list) else [])]:
        run_at = submission.get("run_at") if isinstance(submission, dict) else None
        if isinstance(run_at, str) and _RFC3339.fullmatch(run_at):
            submission["run_at"] = (datetime.now(UTC) + timedelta(hours=1)).isoformat()


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    keep_run_at_in_window(case)
