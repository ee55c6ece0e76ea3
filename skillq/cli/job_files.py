"""`skillq jobs submit --from-file FILE`: many jobs from a JSON Lines file, one batch.

Each non-empty line is one submit body as `POST /api/v1/jobs` takes it (`{"type": ...,
"params": ..., "priority": ...}`); the file is one batch (`POST /api/v1/jobs:batch`), all or
none, so it may hold at most `jobs.max_batch_jobs` lines. `-` reads standard input."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from skillq.errors import InvalidRequest
from skillq.json_values import parse_json


def read_submissions(source: str) -> list[dict[str, Any]]:
    """The file's submissions; exit 2 (InvalidRequest) naming the first bad line."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidRequest(f"cannot read {source}: {error}") from None
    submissions = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        item = parse_json(line, f"{source} line {number}")
        if not isinstance(item, dict):
            raise InvalidRequest(f"{source} line {number} is not a JSON object")
        submissions.append(item)
    if not submissions:
        raise InvalidRequest(f"{source} holds no jobs")
    return submissions
