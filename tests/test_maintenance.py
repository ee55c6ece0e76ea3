"""The scheduler's maintenance actors that keep the broker small."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from dramatiq.message import Message

from skillq.brokers.sqlite import SQLiteBroker
from tests.support import REDIS_URL, ROOT, child_env, require_service, write_settings

DAY_MS = 24 * 3600 * 1000

#: Runs in a process configured from the test's settings, as the worker is.
RUN_PURGE = """
import json
from skillq.actors import maintenance
actor = maintenance.purge_dead_letters
print(json.dumps({
    "purged": actor(),
    "cron": actor.options["periodic"].parsed_from,
    "queue": actor.queue_name,
}))
"""


def run_purge(settings_path: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", RUN_PURGE],
        cwd=ROOT,
        env=child_env(settings_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def message(n: int) -> Message:
    return Message(queue_name="default", actor_name="job", args=(n,), kwargs={}, options={})


def test_dead_letters_older_than_a_week_are_purged_hourly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    settings_path = write_settings(tmp_path, {"server": {"data_dir": str(data)}})
    broker = SQLiteBroker(path=data / "broker.db")
    for n in range(4):
        broker.enqueue(message(n))
    consumer = broker.consume("default", prefetch=3, timeout=100)
    taken = []
    while len(taken) < 3:
        if (item := next(consumer)) is not None:
            taken.append(item)
    for item in taken:
        consumer.nack(item)
    # Dead for 8 days, for 6 days, just now; and a message queued a month ago (not dead).
    now = int(time.time() * 1000)
    ages = {0: 8 * DAY_MS, 1: 6 * DAY_MS, 2: 0}
    with sqlite3.connect(data / "broker.db") as conn:
        for item in taken:
            conn.execute(
                "UPDATE skillq_messages SET mtime = ? WHERE seq = ?",
                (now - ages[item.args[0]], item.seq),
            )
        conn.execute(
            "UPDATE skillq_messages SET mtime = ? WHERE state = 'queued'", (now - 30 * DAY_MS,)
        )

    outcome = run_purge(settings_path)

    assert outcome == {"purged": 1, "cron": "7 * * * *", "queue": "maintenance"}
    assert sorted(m.args[0] for m in broker.dead_letters) == [1, 2]
    pending = broker.consume("default", prefetch=5, timeout=100)
    assert [m.args[0] for m in iter(lambda: next(pending), None)] == [3]


def test_the_purge_leaves_brokers_that_expire_dead_letters_alone(tmp_path: Path) -> None:
    require_service("redis")
    settings_path = write_settings(
        tmp_path,
        {
            "server": {"data_dir": str(tmp_path / "data")},
            "broker": {"backend": "redis", "url": REDIS_URL, "namespace": "skillq-purge-test"},
        },
    )
    assert run_purge(settings_path)["purged"] == 0
