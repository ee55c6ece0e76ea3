"""What every job row must satisfy, whatever a test did to it: checked as a test's store closes.

Since schema 19 the queries on open states find their jobs as the rows whose `completed_at`
is NULL (`models.in_open_state`): an open job with an end time would vanish from recovery,
quotas and queue positions, and an ended job without one would be read by each of them.
"""

from __future__ import annotations

from skillq.storage.models import OPEN_STATES, Job

_OPEN = [state.value for state in OPEN_STATES]


def ended_exactly_when_closed() -> None:
    """Raise AssertionError naming a few rows whose `completed_at` disagrees with their state."""
    wrong = (Job.completed_at.is_null() & Job.state.not_in(_OPEN)) | (
        Job.completed_at.is_null(False) & Job.state.in_(_OPEN)
    )
    rows = list(Job.select(Job.id, Job.state, Job.completed_at).where(wrong).limit(5).tuples())
    assert not rows, f"jobs whose completed_at disagrees with their state: {rows}"
