"""The order in which pytest-xdist hands out test files under `--dist loadfile`: the slowest
first.

A file's tests all run in one process, and xdist hands out files by test count, most first.
Our slowest files have few tests (a handful of fuzz runs, a cluster's worth of end-to-end
tests), so they came last and one process ran on alone for minutes after the other had
finished. Handing the slowest out first (longest-processing-time-first) lets the many short
files fill in around them. The list is measured, not guessed: per-file seconds of a whole
run; a file missing from it, or a name that no longer exists, only changes the order.
"""

from __future__ import annotations

from typing import Any

from xdist.scheduler import LoadFileScheduling

#: Slowest first, with each file's seconds in one process (30 November 2026, load 3 to 5).
SLOWEST_FILES = (
    "test_openapi_command.py",  # 168
    "test_recovery.py",  # 126
    "test_end_to_end.py",  # 115
    "test_openapi.py",  # 94
    "test_job_limits.py",  # 92
    "test_cli.py",  # 83
    "test_finish_kills.py",  # 109 alone at load 6 (added after the measured run)
    "test_mcp.py",  # 62
    "test_cli_scripts.py",  # 55
    "test_mcp_http.py",  # 51
    "test_pools.py",  # 50
    "test_delayed_runs.py",  # 49
    "test_batch_runs.py",  # 45
    "test_several_api_processes.py",  # 44
    "test_dashboard_browser.py",  # 39
)


class SlowestFirstScheduling(LoadFileScheduling):
    """xdist's `loadfile`, with SLOWEST_FILES moved to the head of the queue."""

    def __init__(self, config: Any, log: Any = None) -> None:
        super().__init__(config, log)
        self._slowest_moved_first = False

    def _assign_work_unit(self, node: Any) -> None:
        # The queue is complete when the first file is handed out (xdist builds it from the
        # whole collection, then assigns): reorder it then, once.
        if not self._slowest_moved_first:
            self._slowest_moved_first = True
            for name in reversed(SLOWEST_FILES):
                if f"tests/{name}" in self.workqueue:
                    self.workqueue.move_to_end(f"tests/{name}", last=False)
        super()._assign_work_unit(node)
