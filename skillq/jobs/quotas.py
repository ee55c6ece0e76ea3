"""Per-owner quotas (`[quotas]`), checked at submit: past one, the submit is refused with
`QuotaExceeded` (REST 429 with `Retry-After`, MCP tool error `rate_limited`, CLI exit 6).

`max_pending` counts the owner's pending jobs (queued, delayed, or waiting for a retry),
all types together and, with `[quotas.types.<name>] max_pending`, of one type. The count
and the insert share one transaction under a per-owner lock
(`skillq.storage.owner_counts`), so concurrent submits in several API processes never
exceed a quota. Retries and recovery never submit, so they are not refused.

How many of an owner's jobs *run* at once is a worker-side limit (jobs over it wait,
they are not refused), which belongs with the per-type limits' postponement.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from skillq.errors import QuotaExceeded
from skillq.json_values import shown
from skillq.settings import QuotaSettings
from skillq.storage import owner_counts


def _limits(
    quotas: QuotaSettings, adding: dict[str, int]
) -> list[tuple[str, int, str | None, int]]:
    """(setting name, limit, type counted, jobs this submit adds) of every quota that
    applies to a submit adding `adding` (jobs per type)."""
    limits = []
    if quotas.max_pending is not None:
        limits.append(("quotas.max_pending", quotas.max_pending, None, sum(adding.values())))
    for job_type, count in adding.items():
        typed = quotas.max_pending_of(job_type)
        if typed is not None:
            limits.append((f"quotas.types.{job_type}.max_pending", typed, job_type, count))
    return limits


def within_quota(quotas: QuotaSettings, owner: str, job_type: str) -> Iterator[None]:
    """Run the insert of a new job in the block: raises `QuotaExceeded` first if the owner
    is at a quota. Without quotas for this type, no transaction and no lock."""
    return within_quotas(quotas, owner, {job_type: 1})


@contextmanager
def within_quotas(quotas: QuotaSettings, owner: str, adding: dict[str, int]) -> Iterator[None]:
    """Run the insert of new jobs (`adding`: how many of each type) in the block: raises
    `QuotaExceeded` first if they would take the owner past a quota. A batch is admitted
    whole or not at all, so a refused batch leaves nothing half-submitted."""
    limits = _limits(quotas, adding)
    if not limits:
        yield
        return
    with owner_counts.owner_write_lock(owner):
        for name, limit, counted_type, count in limits:
            pending = owner_counts.pending_count(owner, counted_type)
            if pending + count > limit:
                raise _refusal(
                    name, limit, pending, owner, counted_type, quotas.retry_after_secs, count
                )
        yield


def _refusal(
    name: str,
    limit: int,
    pending: int,
    owner: str,
    job_type: str | None,
    retry_after: int,
    adding: int = 1,
) -> QuotaExceeded:
    what = f"pending {job_type} jobs" if job_type else "pending jobs"
    batch = f" (this submit adds {adding})" if adding > 1 else ""
    return QuotaExceeded(
        f"quota {name} reached: owner {shown(owner)} has {pending} {what}{batch}, at most "
        f"{limit}; retry after {retry_after} s, once some have started",
        [
            {
                "path": name,
                "message": f"{pending} {what}, quota {limit}",
                "quota": name,
                "limit": limit,
                "current": pending,
                "retry_after_secs": retry_after,
            }
        ],
        retry_after=retry_after,
    )
