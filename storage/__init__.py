"""The job-status store: the source of truth for every job's state.

The broker only carries messages; the API, the CLI and MCP read job state from here.
"""

from storage.database import bind_database, open_database
from storage.models import Job, JobState

__all__ = ["Job", "JobState", "bind_database", "open_database"]
