"""A batch submitted over HTTP runs every job to completion, on every broker (real API and
worker processes: the session's shared stack of each broker, tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.reliability import Stack


@pytest.fixture
def stack(broker_stack: Stack) -> Stack:
    return broker_stack


def test_every_job_of_a_batch_completes(stack: Stack) -> None:
    assert stack.client is not None
    body = {
        "jobs": [
            {"type": "sleep", "params": {"seconds": 0.01, "steps": 1}, "priority": priority}
            for priority in ("low", "normal", "high", "normal", "low", 7, 3, "high")
        ]
        + [{"type": "sleep", "params": {"seconds": 0}, "delay_secs": 1}]
    }
    response = stack.client.post("/api/v1/jobs:batch", json=body)
    assert response.status_code == 202, response.text
    made = response.json()["jobs"]
    assert len(made) == 9
    for job in made:
        done = stack.wait_state(job["id"], {"completed", "failed", "cancelled"})
        assert done["state"] == "completed", done
        assert done["attempts"] == 1, done
