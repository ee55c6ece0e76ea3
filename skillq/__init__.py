"""skillq: background jobs for AI tool servers, on Dramatiq.

The names a plugin author needs are importable from here (`skillq.job_type`,
`skillq.report_progress`) and loaded on first use, so `import skillq.storage` or the Python
client do not pull in dramatiq.
"""

from typing import Any

__all__ = ["job_type", "report_progress"]


def __getattr__(name: str) -> Any:
    if name == "job_type":
        from skillq.jobs.plugins import job_type

        return job_type
    if name == "report_progress":
        from skillq.brokers.progress import report_progress

        return report_progress
    raise AttributeError(f"module 'skillq' has no attribute {name!r}")
