"""The job-status store: the source of truth for every job's state.

The broker only carries messages; the API, the CLI and MCP read job state from here.
"""

from skillq.storage.database import bind_database, open_database
from skillq.storage.models import Job, JobState

__all__ = ["Job", "JobState", "bind_database", "open_database"]
