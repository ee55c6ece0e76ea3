"""Each limited job type's limits, and the per-owner running limits, beside their use now,
as `GET /api/v1/stats` and `skillq workers status` show them.

The slots in use are shared capacity, so every caller sees them; the postponed jobs are
someone's own, so a non-admin counts only theirs. `postponed_total` is the store's counter
(what `/metrics` exports as `skillq_jobs_postponed_total`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from skillq.brokers.job_limits import Limit, OwnerLimit
from skillq.storage import job_metrics, limit_usage
from skillq.storage.limit_tables import ALL_TYPES


def limit_status(limits: Mapping[str, Limit], owner: str | None = None) -> dict[str, Any]:
    """`{job type: {max_concurrent, rate, running, started_in_window, postponed,
    postponed_total}}` for every type with a limit; call it inside a store connection."""
    if not limits:
        return {}
    usage = limit_usage.usage(owner)
    counters = job_metrics.counters()
    status = {}
    for name, limit in sorted(limits.items()):
        use = usage.get(name, limit_usage.Usage())
        status[name] = {
            **limit.to_dict(),
            "running": use.running,
            "started_in_window": use.started_in_window,
            "postponed": use.postponed,
            "postponed_total": counters.get(("postponed", name), 0),
        }
    return status


def owner_status(owners: OwnerLimit, owner: str | None = None) -> dict[str, Any]:
    """`{max_running, types: {job type: max_running}, owners: {owner: {running,
    running_by_type, postponed}}}` when per-owner running limits are set, else `{}`. An
    owner is listed while it runs or waits; a non-admin sees only itself. Call it inside a
    store connection."""
    if not owners:
        return {}
    listed = {}
    for name, use in limit_usage.owner_usage(owner).items():
        running = use["running"]
        listed[name] = {
            "running": running.get(ALL_TYPES, 0),
            "running_by_type": {t: n for t, n in running.items() if t != ALL_TYPES},
            "postponed": use["postponed"],
        }
    return {**owners.to_dict(), "owners": listed}
