"""Size caps on the documents a job carries (its params and its result).

Every listing, event stream and broker message copies them, so one oversized document costs
everyone who reads near it; the caps (`[jobs] max_params_bytes`, `max_result_bytes`) are
measured on the JSON the store keeps. The worker applies the result cap
(`skillq.brokers.job_status`).
"""

from __future__ import annotations

from typing import Any

from skillq.errors import InvalidParams
from skillq.storage.models import stored_size


def check_params_size(params: Any, limit: int) -> None:
    """422 for params past `limit` bytes, before anything is written."""
    size = stored_size(params)
    if size > limit:
        raise InvalidParams(
            "params are too large",
            [{"path": "params", "message": f"{size} bytes of JSON; at most {limit}"}],
        )
