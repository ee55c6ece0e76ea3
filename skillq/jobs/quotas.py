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


def _limits(quotas: QuotaSettings, job_type: str) -> list[tuple[str, int, str | None]]:
    """(setting name, limit, type counted) of every quota that applies to this submit."""
    limits = []
    if quotas.max_pending is not None:
        limits.append(("quotas.max_pending", quotas.max_pending, None))
    typed = quotas.max_pending_of(job_type)
    if typed is not None:
        limits.append((f"quotas.types.{job_type}.max_pending", typed, job_type))
    return limits


@contextmanager
def within_quota(quotas: QuotaSettings, owner: str, job_type: str) -> Iterator[None]:
    """Run the insert of a new job in the block: raises `QuotaExceeded` first if the owner
    is at a quota. Without quotas for this type, no transaction and no lock."""
    limits = _limits(quotas, job_type)
    if not limits:
        yield
        return
    with owner_counts.owner_write_lock(owner):
        for name, limit, counted_type in limits:
            pending = owner_counts.pending_count(owner, counted_type)
            if pending >= limit:
                raise _refusal(name, limit, pending, owner, counted_type, quotas.retry_after_secs)
        yield


def _refusal(
    name: str, limit: int, pending: int, owner: str, job_type: str | None, retry_after: int
) -> QuotaExceeded:
    what = f"pending {job_type} jobs" if job_type else "pending jobs"
    return QuotaExceeded(
        f"quota {name} reached: owner {shown(owner)} has {pending} {what}, at most {limit}; "
        f"retry after {retry_after} s, once some have started",
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
