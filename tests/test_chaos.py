"""Chaos: SIGKILL workers twice mid-run, restart the API and the broker server; nothing is lost.

The scenario is bench/chaos.py's (which prints the figures); here its figures must show every
accepted job ended, every completed job's side effect recorded, and double runs only where a
worker running the job was killed. Restarting Redis or RabbitMQ disturbs anyone else using
them, hence the `chaos` marker (`-m "not chaos"` leaves these out on a shared machine); CI
runs them, serially.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import ChaosRun
from tests.reliability import BROKERS
from tests.support import require_service

pytestmark = pytest.mark.chaos

JOBS = 300


#: Every broker on the embedded store, and the server brokers on PostgreSQL as well, the
#: configuration bench/side_by_side.py measures them in (starts not waiting for the disk).
SETUPS = [(broker, "sqlite") for broker in BROKERS] + [
    ("redis", "postgres"),
    ("rabbitmq", "postgres"),
]


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("broker", "store"), SETUPS)
def test_nothing_is_lost_when_workers_die_and_servers_restart(
    broker: str, store: str, tmp_path: Path
) -> None:
    if store == "postgres":
        require_service("postgres")
    figures = ChaosRun(broker, tmp_path, JOBS, store).run(restart_broker=True)
    print(figures)
    assert figures.accepted == JOBS
    assert figures.lost == 0, figures
    assert figures.completed == JOBS, figures
    assert figures.run_twice_unexplained == 0, figures
    # Both SIGKILLs hit a running job, and each of those jobs ran again.
    assert len(figures.recovery_secs) == 2, figures
