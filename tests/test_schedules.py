"""User schedules: each cron tick submits one job, however many schedulers run."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from skillq.settings import StorageSettings
from skillq.storage import schedules as schedule_store
from skillq.storage.database import connection
from tests.support import (
    ROOT,
    ChildProcess,
    child_env,
    start_worker,
    wait_for,
    write_settings,
)


@pytest.fixture
def store_connection(store: StorageSettings) -> Iterator[None]:
    with connection():
        yield


def test_a_fire_is_claimed_once(store_connection: None) -> None:
    tick = datetime(2026, 11, 25, 3, 0)
    assert schedule_store.claim("nightly", tick, claimed_by="a")
    assert not schedule_store.claim("nightly", tick, claimed_by="b")
    assert schedule_store.claim("nightly", tick.replace(day=26), claimed_by="b")
    assert schedule_store.claim("hourly", tick, claimed_by="b")
    schedule_store.record_job("nightly", tick, "job-1")
    fires = schedule_store.fires("nightly")
    assert [(f.claimed_by, f.job_id) for f in fires] == [("a", "job-1"), ("b", None)]
    schedule_store.release("nightly", tick)
    assert schedule_store.claim("nightly", tick, claimed_by="c")


FIRE_LINE = re.compile(r"schedule every-minute at (\S+): (fired job \S+|already fired)")


def test_two_schedulers_fire_a_schedule_once(tmp_path: Path) -> None:
    settings_path = write_settings(
        tmp_path,
        {
            "server": {"data_dir": str(tmp_path / "data")},
            "workers": {"heartbeat_secs": 0.5, "dead_after_secs": 3},
        },
    )
    with settings_path.open("a") as settings:
        settings.write(
            '\n[[schedules]]\nname = "every-minute"\ncron = "* * * * *"\ntype = "sleep"\n'
            'params = { seconds = 0, steps = 1, echo = "tick" }\n'
        )
    worker = start_worker(settings_path, tmp_path)
    # periodiq sends every actor due in the current minute as soon as it starts.
    schedulers = [
        ChildProcess("scheduler", ["-m", "skillq", "scheduler"], settings_path, tmp_path)
        for _ in range(2)
    ]
    try:

        def outcomes() -> dict[str, list[str]]:
            by_tick: dict[str, list[str]] = defaultdict(list)
            for tick, outcome in FIRE_LINE.findall(worker.log_path.read_text()):
                by_tick[tick].append(outcome)
            return by_tick

        # Both schedulers' messages for one tick have run (a minute boundary between the
        # two starts would make two ticks of one message each; wait for the next tick then).
        wait_for(
            lambda: any(len(o) == 2 for o in outcomes().values()),
            timeout=100,
            what="two messages of one tick",
        )
        tick, seen = next((t, o) for t, o in outcomes().items() if len(o) == 2)
        assert sorted(o.split()[0] for o in seen) == ["already", "fired"], seen
        job_id = next(o for o in seen if o.startswith("fired")).split()[-1]
        with sqlite3.connect(tmp_path / "data" / "jobs.db") as db:
            rows = db.execute(
                "SELECT id, owner, idempotency_key FROM skillq_job WHERE type = 'sleep'"
            ).fetchall()
            fires = db.execute(
                "SELECT job_id FROM skillq_schedule_fire WHERE name = 'every-minute'"
                " AND fire_at = ?",
                (tick.replace("T", " "),),
            ).fetchall()
        assert fires == [(job_id,)]
        assert (job_id, "scheduler", f"schedule:every-minute@{tick}") in rows
        assert len([r for r in rows if r[2].endswith(tick)]) == 1
    finally:
        for scheduler in schedulers:
            scheduler.stop()
        worker.stop()


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ('type = "nope"', "schedules[0].type: unknown job type 'nope'"),
        ('type = "sleep"\nparams = { seconds = -1 }', "schedules[0].params: -1 is less than"),
        (
            'type = "execute_skill"\nparams = { skill = "nope", tool = "x" }',
            'schedules[0].params: no skill named "nope"',
        ),
    ],
)
def test_a_schedule_that_could_never_fire_stops_start_up(
    tmp_path: Path, schedule: str, expected: str
) -> None:
    settings_path = write_settings(tmp_path, {"server": {"data_dir": str(tmp_path / "data")}})
    with settings_path.open("a") as settings:
        settings.write(f'\n[[schedules]]\nname = "bad"\ncron = "0 3 * * *"\n{schedule}\n')
    result = subprocess.run(
        [sys.executable, "-m", "skillq", "scheduler"],
        cwd=ROOT,
        env=child_env(settings_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
