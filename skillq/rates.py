"""A job type's rate limit as written in settings and actor options: ``"10/minute"``.

Ground floor (no imports of skillq's own): the settings check it, the limiter middleware
applies it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Seconds in each unit a rate may be written per (singular, plural and short forms).
UNITS = {
    "second": 1.0,
    "seconds": 1.0,
    "s": 1.0,
    "minute": 60.0,
    "minutes": 60.0,
    "m": 60.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "h": 3600.0,
    "day": 86400.0,
    "days": 86400.0,
    "d": 86400.0,
}
#: More starts per window than this would mean that many rows to scan per start.
MAX_COUNT = 10_000
_RATE = re.compile(r"\s*([0-9]+)\s*/\s*([0-9]*\.?[0-9]*)\s*([a-z]+)\s*")


@dataclass(frozen=True)
class Rate:
    """At most `count` starts in any window of `period_secs` seconds."""

    count: int
    period_secs: float

    def __str__(self) -> str:
        return f"{self.count}/{self.period_secs:g}s"


def parse_rate(text: str) -> Rate:
    """``"10/minute"``, ``"5/second"``, ``"100/hour"``, ``"3/10s"``; ValueError says what is
    wrong, for a settings error or a plugin error naming the job type."""
    match = _RATE.fullmatch(text.lower())
    if match is None or match[3] not in UNITS:
        raise ValueError(f"expected COUNT/UNIT such as '10/minute' or '5/second' (got {text!r})")
    count = int(match[1])
    multiple = float(match[2]) if match[2] else 1.0
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"the count must be between 1 and {MAX_COUNT} (got {text!r})")
    if multiple <= 0:
        raise ValueError(f"the period must be greater than 0 (got {text!r})")
    return Rate(count, multiple * UNITS[match[3]])
