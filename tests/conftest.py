"""Test-session set-up shared by every suite.

In-process tests import `actors`, which configures the process from SKILLQ_SETTINGS at
import time; so before any test module is imported, point it at an embedded (SQLite)
configuration in a temporary directory. End-to-end tests start their own processes with
their own settings files.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from skillq.settings import StorageSettings
from tests.reliability import BROKERS, Stack, shared_stack
from tests.scheduling import SlowestFirstScheduling
from tests.support import (
    RABBITMQ_VHOST,
    bound_store,
    ensure_rabbitmq_vhost,
    require_bwrap,
    stop_all,
    write_settings,
)

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
    ensure_rabbitmq_vhost(RABBITMQ_VHOST)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """`--dist loadfile` hands out the slowest files first (tests/scheduling.py)."""
    if config.getoption("dist") == "loadfile":
        return SlowestFirstScheduling(config, log)
    return None


@pytest.fixture(autouse=True)
def _no_log_context_left_behind() -> Iterator[None]:
    """Tests that call a worker's middleware hooks in this thread (a job's `before_*` only)
    leave its ids bound to the thread's log context; the next test must not log with them."""
    yield
    structlog.contextvars.clear_contextvars()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StorageSettings]:
    """The job store on each backend, fresh and bound for one test."""
    with bound_store(request.param, tmp_path) as settings:
        yield settings


@pytest.fixture(params=["bwrap", "process"])
def sandbox_mode(request: pytest.FixtureRequest) -> str:
    """Each sandbox mode; bwrap must work here when services are required (CI installs it)."""
    if request.param == "bwrap":
        require_bwrap()
    return request.param


@pytest.fixture(scope="session")
def _broker_stacks() -> Iterator[dict[str, Stack]]:
    """Each broker's shared stack, once booted, up to the end of the session."""
    running: dict[str, Stack] = {}
    try:
        yield running
    finally:
        # All at once (one shared grace period), then each stack's own clean-up.
        stop_all([p for s in running.values() for p in [*s.workers, *filter(None, [s.api])]])
        for stack in running.values():
            stack.close()


@pytest.fixture(params=BROKERS)
def broker_stack(
    request: pytest.FixtureRequest,
    _broker_stacks: dict[str, Stack],
    tmp_path_factory: pytest.TempPathFactory,
) -> Stack:
    """A real API and worker pool on each broker, shared by suites that leave it as they
    found it (test_cancel, test_delayed_runs, test_batch_runs). Booted on first use and kept
    for the session: as a parametrized session fixture, pytest kept one broker's up at a
    time, so each of those files (run one after another in a test process, each going
    through the brokers in turn) booted all three again, about 9 s of CPU each; idle, a
    stack takes about 0.5% of a core."""
    if request.param not in _broker_stacks:
        directory = tmp_path_factory.mktemp(f"stack-{request.param}")
        _broker_stacks[request.param] = shared_stack(request.param, directory)
    return _broker_stacks[request.param]
