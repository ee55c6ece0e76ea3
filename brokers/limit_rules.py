"""What a job type's and an owner's limits are, as settings and actor options declare them.

The values only: `skillq.brokers.limiter` enforces them; the broker factory, the CLI and the
stats read them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from skillq.rates import Rate, parse_rate
from skillq.settings import QuotaSettings


@dataclass(frozen=True)
class Limit:
    """A job type's limits; None for no limit of that kind."""

    max_concurrent: int | None = None
    rate: Rate | None = None

    def __bool__(self) -> bool:
        return self.max_concurrent is not None or self.rate is not None

    def to_dict(self) -> dict[str, Any]:
        rate = self.rate
        per = None if rate is None else {"count": rate.count, "period_secs": rate.period_secs}
        return {"max_concurrent": self.max_concurrent, "rate": per}


def limit_from(max_concurrent: Any = None, rate: Any = None) -> Limit:
    """A Limit from setting or option values; ValueError names what is wrong."""
    if max_concurrent is not None and (type(max_concurrent) is not int or max_concurrent < 1):
        raise ValueError(f"max_concurrent must be a positive integer (got {max_concurrent!r})")
    if rate is not None and not isinstance(rate, str):
        raise ValueError(f"rate must be a string such as '10/minute' (got {rate!r})")
    return Limit(max_concurrent, None if rate is None else parse_rate(rate))


@dataclass(frozen=True)
class OwnerLimit:
    """How many of one owner's jobs run at once, all workers together: `max_running` of
    every type, `types` of one type each (`[quotas] max_running`, `[quotas.types.<name>]`)."""

    max_running: int | None = None
    types: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, quotas: QuotaSettings) -> OwnerLimit:
        return cls(quotas.max_running, quotas.max_running_by_type())

    def __bool__(self) -> bool:
        return self.max_running is not None or bool(self.types)

    def caps(self, job_type: str) -> tuple[int | None, int | None]:
        """(every type, this type) caps for a job of `job_type`."""
        return self.max_running, self.types.get(job_type)

    def to_dict(self) -> dict[str, Any]:
        return {"max_running": self.max_running, "types": dict(sorted(self.types.items()))}
