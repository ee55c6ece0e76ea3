"""The back-off between attempts that `JobRetries` computes, as the README states it: retry n
waits between retry_delay·2^(n-1) and twice that, and a wait past 32·retry_delay is drawn
from 16-32·retry_delay. These are the delays handed to the broker, not wall-clock time."""

from __future__ import annotations

from typing import Any

import dramatiq
import pytest

from skillq.brokers.factory import job_middleware
from skillq.brokers.retries import JobRetries
from skillq.settings import WorkerSettings


class _Actor:
    options: dict[str, Any] = {}


class _RecordingBroker:
    """Just enough broker for `Retries.after_process_message`: the delay of each re-enqueue."""

    def __init__(self) -> None:
        self.delays: list[int | None] = []

    def get_actor(self, name: str) -> _Actor:
        return _Actor()

    def enqueue(self, message: dramatiq.Message, *, delay: int | None = None) -> None:
        self.delays.append(delay)


def _retries_of(settings: WorkerSettings) -> JobRetries:
    (retries,) = [m for m in job_middleware(settings) if isinstance(m, JobRetries)]
    return retries


def delays_secs(retries: JobRetries, retry: int, samples: int) -> list[float]:
    """The back-off before retry number `retry` (1 = the first), `samples` times."""
    broker = _RecordingBroker()
    for _ in range(samples):
        message = dramatiq.Message(
            queue_name="default", actor_name="sleep", args=(), kwargs={}, options={}
        )
        message.options["retries"] = retry - 1
        try:
            raise RuntimeError("boom")
        except RuntimeError as error:
            retries.after_process_message(broker, message, exception=error)
    assert len(broker.delays) == samples
    return [delay / 1000 for delay in broker.delays]


@pytest.mark.parametrize(
    ("retry", "low", "high"),
    [(1, 5, 10), (2, 10, 20), (3, 20, 40), (4, 40, 80), (5, 80, 160), (6, 80, 160), (9, 80, 160)],
)
def test_the_default_delays_are_the_documented_ranges(retry: int, low: float, high: float):
    retries = _retries_of(WorkerSettings(max_retries=20, retry_delay_secs=5))
    delays = delays_secs(retries, retry, samples=300)
    assert all(low <= delay <= high for delay in delays), (min(delays), max(delays))
    # Jittered across the range, not pinned to one end of it.
    middle = (low + high) / 2
    assert min(delays) < middle < max(delays)


def test_a_zero_delay_retries_at_once():
    retries = _retries_of(WorkerSettings(max_retries=3, retry_delay_secs=0))
    assert delays_secs(retries, 1, samples=5) == [0.0] * 5
    assert delays_secs(retries, 3, samples=5) == [0.0] * 5
