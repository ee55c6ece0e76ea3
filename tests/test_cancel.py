"""Cancelling a running job, on every broker, with real API and worker processes.

The worker notices the store's cancel request (no broker-specific channel), interrupts the
actor, kills a skill's subprocess group, and the job ends `cancelled` without a retry.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.reliability import Stack
from tests.support import ROOT, child_env, host_processes, process_gone, sleep_marker, wait_for


@pytest.fixture
def stack(broker_stack: Stack) -> Stack:
    """The session's stack of each broker (tests/conftest.py), shared with the delayed-job
    suite: one API and worker boot per broker instead of one per suite."""
    return broker_stack


def _assert_stays_cancelled(stack: Stack, job_id: str) -> None:
    """A job submitted after the cancel completes; by then a retry would have shown up."""
    later = stack.submit({"type": "sleep", "params": {"seconds": 0.2, "steps": 1}})
    stack.wait_state(later["id"], {"completed"})
    job = stack.job(job_id)
    assert job["state"] == "cancelled", job
    assert job["attempts"] == 1, job


def test_a_running_sleep_job_is_cancelled(stack: Stack) -> None:
    job = stack.submit({"type": "sleep", "params": {"seconds": 100, "steps": 1000}})
    wait_for(lambda: (stack.job(job["id"])["progress"] or 0) > 0, what="the job to run")

    response = stack.cancel(job["id"])
    assert response.status_code == 202, response.text
    assert response.json()["cancel_requested_at"] is not None

    cancelled = stack.wait_state(job["id"], {"cancelled", "failed", "completed"}, timeout=15)
    assert cancelled["state"] == "cancelled", cancelled
    assert cancelled["error"] is None
    assert stack.cancel(job["id"]).status_code == 409  # already terminal
    _assert_stays_cancelled(stack, job["id"])


def test_a_running_skill_subprocess_is_killed_and_cancelled(stack: Stack) -> None:
    # The child is found from the host by its unique argument: in the bwrap sandbox the PID
    # the tool sees is one of its own namespace.
    marker = sleep_marker()
    params = {"skill": "napper", "tool": "nap", "input": {"seconds": marker}}
    job = stack.submit({"type": "execute_skill", "params": params})
    (child_pid,) = wait_for(lambda: host_processes(marker), what="the tool to start its child")

    assert stack.cancel(job["id"]).status_code == 202
    cancelled = stack.wait_state(job["id"], {"cancelled", "failed", "completed"}, timeout=15)
    assert cancelled["state"] == "cancelled", cancelled
    # As the README states: a cancelled tool is not a failure, so no error type.
    assert cancelled["error"] is None and cancelled["message"] == "cancelled", cancelled
    wait_for(lambda: process_gone(child_pid), timeout=10, what="the tool's child to be killed")
    _assert_stays_cancelled(stack, job["id"])


def test_a_pending_job_is_cancelled_at_once(stack: Stack) -> None:
    # Fill every worker thread so the next job waits in the queue.
    blockers = [
        stack.submit({"type": "sleep", "params": {"seconds": 100, "steps": 1000}}) for _ in range(4)
    ]
    try:
        for blocker in blockers:
            stack.wait_state(blocker["id"], {"running"})
        waiting = stack.submit({"type": "sleep", "params": {"seconds": 0.1}})
        response = stack.cancel(waiting["id"])
        assert response.status_code == 200, response.text
        assert response.json()["state"] == "cancelled"
    finally:
        for blocker in blockers:
            stack.cancel(blocker["id"])
        for blocker in blockers:
            stack.wait_state(blocker["id"], {"cancelled"}, timeout=15)
    assert stack.job(waiting["id"])["attempts"] == 0


def test_the_cli_cancels_a_running_job(stack: Stack) -> None:
    job = stack.submit({"type": "sleep", "params": {"seconds": 100, "steps": 1000}})
    wait_for(lambda: (stack.job(job["id"])["progress"] or 0) > 0, what="the job to run")
    result = subprocess.run(
        [sys.executable, "-m", "skillq", "jobs", "cancel", job["id"]],
        cwd=ROOT,
        env=child_env(stack.settings_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["cancel_requested_at"] is not None
    stack.wait_state(job["id"], {"cancelled"}, timeout=15)
    again = subprocess.run(
        [sys.executable, "-m", "skillq", "jobs", "cancel", job["id"]],
        cwd=ROOT,
        env=child_env(stack.settings_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 4 and "cancelled" in again.stderr
