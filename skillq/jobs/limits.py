"""Each limited job type's limits beside their use now, as `GET /api/v1/stats` and
`skillq workers status` show them.

The slots in use are shared capacity, so every caller sees them; the postponed jobs are
someone's own, so a non-admin counts only theirs. `postponed_total` is the store's counter
(what `/metrics` exports as `skillq_jobs_postponed_total`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from skillq.brokers.job_limits import Limit
from skillq.storage import job_limits, job_metrics


def limit_status(limits: Mapping[str, Limit], owner: str | None = None) -> dict[str, Any]:
    """`{job type: {max_concurrent, rate, running, started_in_window, postponed,
    postponed_total}}` for every type with a limit; call it inside a store connection."""
    if not limits:
        return {}
    usage = job_limits.usage(owner)
    counters = job_metrics.counters()
    status = {}
    for name, limit in sorted(limits.items()):
        use = usage.get(name, job_limits.Usage())
        status[name] = {
            **limit.to_dict(),
            "running": use.running,
            "started_in_window": use.started_in_window,
            "postponed": use.postponed,
            "postponed_total": counters.get(("postponed", name), 0),
        }
    return status
