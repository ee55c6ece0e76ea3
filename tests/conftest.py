"""Test-session set-up shared by every suite.

In-process tests import `actors`, which configures the process from SKILLQ_SETTINGS at
import time; so before any test module is imported, point it at an embedded (SQLite)
configuration in a temporary directory. End-to-end tests start their own processes with
their own settings files.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tests.support import write_settings

_session_dir = Path(tempfile.mkdtemp(prefix="skillq-tests-"))


def pytest_configure(config: object) -> None:
    settings = write_settings(
        _session_dir,
        {
            "server": {"data_dir": str(_session_dir / "data")},
            "workers": {"max_retries": 1, "retry_delay_secs": 0, "job_timeout_secs": 5},
        },
    )
    os.environ["SKILLQ_SETTINGS"] = str(settings)
