"""A worker pool per queue, and resizing the pools of a live `skillq up`.

The end-to-end tests run `skillq up` (API + one dramatiq group per queue) with the job
types of tests/pool_jobs.py, which record when each run starts and ends: ten long index
jobs do not delay skill jobs, at most `skill_workers` skill jobs overlap, and jobs submitted
without pause while the skill pool is scaled up, down to nothing and up again all run
exactly once. The REST resize is admin-only; the rest are unit tests of the pieces.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from skillq import actors
from skillq.api.app import create_app
from skillq.cli.main import app as cli_app
from skillq.cli.supervisor import Child, Supervisor
from skillq.cli.worker_pools import WorkerPools
from skillq.errors import InvalidRequest
from skillq.jobs.pools import QUEUES, configured_threads, parse_sizes, served_queues
from skillq.settings import AuthSettings, JwtSettings, Settings, WorkerSettings
from skillq.storage import pools
from skillq.storage.database import connection
from tests.support import (
    LOCAL_URL,
    ROOT,
    ChildProcess,
    child_env,
    free_port,
    wait_for,
    write_settings,
)

# --- end to end: `skillq up` -------------------------------------------------------------


@contextlib.contextmanager
def running_up(directory: Path, workers: dict[str, Any]) -> Iterator[tuple[str, Path, Path]]:
    """`skillq up --no-scheduler` with the test job types; yields (API URL, settings, record)."""
    port = free_port()
    settings_path = write_settings(
        directory,
        {
            "server": {"data_dir": str(directory / "data"), "port": port},
            "workers": {"heartbeat_secs": 0.5, "max_retries": 0, **workers},
            "jobs": {"modules": ["tests.pool_jobs"]},
        },
    )
    up = ChildProcess("up", ["-m", "skillq", "up", "--no-scheduler"], settings_path, directory)
    url = f"http://127.0.0.1:{port}"
    try:
        # Every pool at its size: each queue's group has booted and registered.
        wait_for(
            lambda: _pools_ready(url, up),
            timeout=120,
            what="every pool to start",
        )
        yield url, settings_path, directory / "runs.log"
    finally:
        up.stop(timeout=90)


def _pools_ready(url: str, up: ChildProcess) -> bool:
    assert up.alive(), up.log()
    try:
        listed = httpx.get(f"{url}/api/v1/workers/scale", timeout=5).json()["pools"]
    except (httpx.HTTPError, KeyError, ValueError):
        return False
    # A pool of 0 threads (the webhooks one without webhooks set up) runs no process.
    return all(
        p["actual_threads"] == ([p["desired_threads"]] if p["desired_threads"] else [])
        for p in listed
    )


def pool_threads(url: str, queue: str) -> list[int]:
    listed = httpx.get(f"{url}/api/v1/workers/scale", timeout=10).json()["pools"]
    (pool,) = [p for p in listed if p["queue"] == queue]
    return pool["actual_threads"]


def submit(url: str, job_type: str, record: Path, tag: str, seconds: float) -> str:
    params = {"record": str(record), "tag": tag, "seconds": seconds}
    response = httpx.post(
        f"{url}/api/v1/jobs", json={"type": job_type, "params": params}, timeout=30
    )
    assert response.status_code == 202, response.text
    return response.json()["id"]


def states(url: str, job_ids: list[str]) -> list[str]:
    return [httpx.get(f"{url}/api/v1/jobs/{i}", timeout=10).json()["state"] for i in job_ids]


def runs(record: Path) -> list[tuple[str, str, int, float]]:
    """(start|end, tag, pid, monotonic time) per line of the record."""
    if not record.exists():
        return []
    rows = []
    for line in record.read_text().splitlines():
        kind, tag, pid, at = line.split()
        rows.append((kind, tag, int(pid), float(at)))
    return rows


def spans(record: Path, prefix: str) -> list[tuple[float, float]]:
    starts = {tag: at for kind, tag, _, at in runs(record) if kind == "start"}
    ends = {tag: at for kind, tag, _, at in runs(record) if kind == "end"}
    return [(at, ends[tag]) for tag, at in starts.items() if tag.startswith(prefix)]


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end before a start at the same time)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    most = current = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


@pytest.mark.timeout(400)  # real processes on a shared machine: boot is slow under load
def test_a_flood_of_index_jobs_neither_delays_skill_jobs_nor_widens_their_pool(
    tmp_path: Path,
) -> None:
    workers = {"skill_workers": 2, "index_workers": 1, "shutdown_grace_secs": 1}
    with running_up(tmp_path, workers) as (url, _, record):
        flood = [submit(url, "slow_index", record, f"index-{i}", 300) for i in range(10)]
        wait_for(
            lambda: any(kind == "start" for kind, *_ in runs(record)),
            timeout=60,
            what="the index pool to take a flood job",
        )
        probes = [submit(url, "pool_probe", record, f"skill-{i}", 1.0) for i in range(8)]
        wait_for(
            lambda: states(url, probes) == ["completed"] * 8,
            timeout=120,
            what="the skill jobs, behind ten index jobs",
        )
        # The index pool is one thread: one flood job runs, nine wait their turn, while all
        # eight skill jobs have run on the skill pool's own threads.
        assert sorted(states(url, flood)) == ["pending"] * 9 + ["running"]
        skill_spans = spans(record, "skill-")
        assert len(skill_spans) == 8
        assert max_overlap(skill_spans) == 2  # skill_workers, reached and never passed
        index_starts = [tag for kind, tag, *_ in runs(record) if kind == "start" and "index" in tag]
        assert len(index_starts) == 1


def scale_with_cli(settings_path: Path, pair: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "skillq", "workers", "scale", pair],
        cwd=ROOT,
        env=child_env(settings_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.timeout(600)  # four resizes, each a group's boot and drain
def test_scaling_up_and_down_under_load_runs_every_job_exactly_once(tmp_path: Path) -> None:
    workers = {"skill_workers": 1, "shutdown_grace_secs": 20}
    with running_up(tmp_path, workers) as (url, settings_path, record):
        submitted: list[tuple[str, str]] = []
        stop = threading.Event()

        def feed() -> None:
            while not stop.is_set():
                tag = f"load-{len(submitted)}"
                submitted.append((tag, submit(url, "pool_probe", record, tag, 0.2)))
                stop.wait(0.15)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        try:
            for pair, expected in [
                ("skill=4", [4]),
                ("skill=2", [2]),
                ("skill=0", []),
                ("skill=3", [3]),
            ]:
                if pair == "skill=2":  # one step over REST, the others by the CLI
                    response = httpx.put(
                        f"{url}/api/v1/workers/scale", json={"threads": {"skill": 2}}, timeout=30
                    )
                    assert response.status_code == 200, response.text
                else:
                    scale_with_cli(settings_path, pair)
                wait_for(
                    lambda expected=expected: pool_threads(url, "skill") == expected,
                    timeout=120,
                    what=f"the skill pool at {pair}",
                )
        finally:
            stop.set()
            feeder.join(timeout=60)
        ids = [job_id for _, job_id in submitted]
        wait_for(
            lambda: set(states(url, ids)) == {"completed"},
            timeout=240,
            what="every job submitted during the scaling",
        )
        started = Counter(tag for kind, tag, _, _ in runs(record) if kind == "start")
        assert sorted(started) == sorted(tag for tag, _ in submitted)
        assert set(started.values()) == {1}
        # The jobs really ran across the successive groups (4, 2 and 3 threads, and the first).
        pids = {pid for kind, _, pid, _ in runs(record) if kind == "start"}
        assert len(pids) >= 3

        # The CLI shows the same pools: desired (and whence) against what runs.
        status = subprocess.run(
            [sys.executable, "-m", "skillq", "workers", "status", "--json"],
            cwd=ROOT,
            env=child_env(settings_path),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert status.returncode == 0, status.stderr
        (skill,) = [p for p in json.loads(status.stdout)["pools"] if p["queue"] == "skill"]
        assert skill == {
            "queue": "skill",
            "desired_threads": 3,
            "desired_processes": 1,
            "source": "scaled",
            "actual_threads": [3],
        }


# --- REST: admins only ------------------------------------------------------------------

SECRET = "pools-test-secret-" + "p" * 32


def bearer(subject: str, roles: list[str]) -> dict[str, str]:
    now = int(time.time())
    claims = {"sub": subject, "roles": roles, "iss": "skillq", "aud": "skillq-api"}
    token = jwt.encode({**claims, "iat": now, "exp": now + 600}, SECRET, algorithm="HS256")
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def jwt_client() -> Iterator[TestClient]:
    auth = AuthSettings(mode="jwt", jwt=JwtSettings(secret=SECRET))
    with connection():
        pools.reset_desired(list(QUEUES))
    app = create_app(dataclasses.replace(actors.settings, auth=auth))
    with TestClient(app, base_url=LOCAL_URL) as client:
        yield client
    with connection():
        pools.reset_desired(list(QUEUES))


def skill_pool(client: TestClient, headers: dict[str, str]) -> dict[str, Any]:
    response = client.get("/api/v1/workers/scale", headers=headers)
    assert response.status_code == 200, response.text
    (pool,) = [p for p in response.json()["pools"] if p["queue"] == "skill"]
    return pool


def test_only_an_admin_may_resize_a_pool(jwt_client: TestClient) -> None:
    body = {"threads": {"skill": 8, "index": 2}}
    viewer = bearer("val", ["viewer"])
    assert jwt_client.put("/api/v1/workers/scale", json=body).status_code == 401
    for roles in (["viewer"], ["submitter"], []):
        refused = jwt_client.put("/api/v1/workers/scale", json=body, headers=bearer("x", roles))
        assert refused.status_code == 403, refused.text
    settings_size = actors.settings.workers.skill_workers
    assert skill_pool(jwt_client, viewer)["desired_threads"] == settings_size

    admin = bearer("root", ["admin"])
    done = jwt_client.put("/api/v1/workers/scale", json=body, headers=admin)
    assert done.status_code == 200, done.text
    pool = skill_pool(jwt_client, viewer)
    assert (pool["desired_threads"], pool["source"]) == (8, "scaled")
    # JSON's integer 3.0 is 3, as the document's schema says.
    again = {"threads": {"skill": 3.0}}
    assert jwt_client.put("/api/v1/workers/scale", json=again, headers=admin).status_code == 200
    assert skill_pool(jwt_client, viewer)["desired_threads"] == 3
    with connection():
        assert pools.DesiredPool.get_by_id("skill").updated_by == "root"


@pytest.mark.parametrize(
    ("body", "status", "path"),
    [
        ({"threads": {"nope": 1}}, 422, "threads.nope"),
        ({"threads": {"skill": -1}}, 422, "threads.skill"),
        ({"threads": {"skill": 257}}, 422, "threads.skill"),
        ({"threads": {"skill": True}}, 422, "threads.skill"),
        ({"threads": {"skill": 1.5}}, 422, "threads.skill"),
        ({"threads": {"skill": "8"}}, 422, "threads.skill"),
        ({"threads": {}}, 422, "threads"),
        ({"threads": [1]}, 422, "threads"),
        ({"skill": 8}, 422, "body"),
        ({"threads": {"skill": 8}, "extra": 1}, 422, "body"),
        ([], 422, "body"),
    ],
)
def test_a_bad_resize_is_refused_and_changes_nothing(
    jwt_client: TestClient, body: Any, status: int, path: str
) -> None:
    admin = bearer("root", ["admin"])
    response = jwt_client.put("/api/v1/workers/scale", json=body, headers=admin)
    assert response.status_code == status, response.text
    assert path in [d["path"] for d in response.json()["error"]["details"]]
    assert skill_pool(jwt_client, admin)["source"] == "settings"


def test_a_resize_that_is_not_json_is_a_400(jwt_client: TestClient) -> None:
    admin = {**bearer("root", ["admin"]), "Content-Type": "application/json"}
    response = jwt_client.put("/api/v1/workers/scale", content=b"{skill", headers=admin)
    assert response.status_code == 400, response.text


# --- the pieces --------------------------------------------------------------------------


def test_each_queue_has_its_own_setting_and_others_take_default_workers() -> None:
    settings = Settings(
        workers=WorkerSettings(
            ai_workers=3,
            index_workers=5,
            skill_workers=7,
            default_workers=11,
            maintenance_workers=13,
        )
    )
    sizes = {q: configured_threads(settings, q) for q in [*QUEUES, "plugin-queue"]}
    assert sizes == {
        "ai": 3,
        "index": 5,
        "skill": 7,
        "default": 11,
        "maintenance": 13,
        "webhooks": 0,  # no [webhooks] secret nor subscriptions: nothing to deliver
        "plugin-queue": 11,
    }
    assert served_queues(["skill", "zeta", "alpha"]) == [*QUEUES, "alpha", "zeta"]


def test_the_cli_sizes_parse_and_bad_ones_name_the_fix() -> None:
    assert parse_sizes(["ai=4", "index=2", "skill=8"]) == {"ai": 4, "index": 2, "skill": 8}
    for bad in ("skill", "=3", "skill=x", "skill=1.5"):
        with pytest.raises(InvalidRequest, match=r"QUEUE=THREADS|whole number"):
            parse_sizes([bad])


class FakeSupervisor:
    def __init__(self, children: list[Child]) -> None:
        self.children = children
        self.retired: list[Child] = []

    def retire(self, child: Child) -> None:
        self.children.remove(child)
        self.retired.append(child)

    def add(self, child: Child) -> None:
        self.children.append(child)


def test_the_reconciler_replaces_only_the_resized_queues_group() -> None:
    desired = {"skill": 4, "index": 1, "ai": 0}
    pools_ = WorkerPools(desired, processes=2, read_desired=lambda: dict(desired))
    children = pools_.children()
    assert [c.name for c in children] == ["worker:skill", "worker:index"]  # ai: 0, no group
    assert children[0].command[-6:] == ["--queue", "skill", "--threads", "4", "--processes", "2"]
    supervisor = FakeSupervisor(list(children))

    pools_(supervisor)  # nothing changed
    assert supervisor.retired == [] and supervisor.children == children

    desired.update(skill=8, ai=2)
    pools_(supervisor)
    assert supervisor.retired == [children[0]]
    names = {c.name: c.command for c in supervisor.children}
    assert names["worker:skill"][-3] == "8" and names["worker:ai"][-3] == "2"
    assert names["worker:index"] is children[1].command

    desired.update(skill=0)
    pools_(supervisor)
    assert "worker:skill" not in [c.name for c in supervisor.children]


def test_worker_with_one_queue_is_exactly_that_queues_dramatiq(monkeypatch, tmp_path) -> None:
    settings_path = write_settings(tmp_path, {"workers": {"skill_workers": 6, "ai_workers": 0}})
    calls: list[list[str]] = []

    def fake_execv(program: str, argv: list[str]) -> None:
        calls.append(argv)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execv", fake_execv)
    monkeypatch.setenv("SKILLQ_SETTINGS", str(settings_path))
    runner = CliRunner()
    result = runner.invoke(cli_app, ["worker", "--queue", "skill"])
    assert result.exit_code == 0, result.output
    (argv,) = calls
    assert argv[argv.index("--queues") :] == ["--queues", "skill"]
    assert argv[argv.index("--threads") + 1] == "6"

    # A queue whose pool is 0 threads has no worker to run: said, not a 0-thread dramatiq.
    result = runner.invoke(cli_app, ["worker", "--queue", "ai"])
    assert result.exit_code == 2, result.output  # InvalidRequest, through the exit table
    assert "0 threads" in result.output
    assert len(calls) == 1


def test_a_retired_child_drains_then_is_killed_after_the_grace() -> None:
    """Retiring sends SIGTERM only; a child that ignores it is SIGKILLed at the deadline and
    never restarted, while its replacement is supervised as usual."""
    stubborn = Child(
        "worker:skill",
        [
            sys.executable,
            "-c",
            "import signal, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: print('term', flush=True))\n"
            "time.sleep(120)",
        ],
    )
    polite = Child("worker:skill", [sys.executable, "-c", "import time; time.sleep(120)"])
    supervisor = Supervisor([stubborn], grace_secs=1.0)
    stubborn.start()
    try:
        time.sleep(0.5)  # let it install its handler
        supervisor.retire(stubborn)
        supervisor.add(polite)
        assert supervisor.children == [polite]
        assert stubborn.process.poll() is None  # SIGTERM ignored: still draining
        wait_for(
            lambda: (supervisor._reap_draining(), stubborn.process.poll() is not None)[1],
            timeout=30,
            what="the stubborn child to be killed",
        )
        assert stubborn.process.returncode == -signal.SIGKILL
        supervisor._reap_draining()
        assert supervisor.draining == []
        assert supervisor._restart_dead_children() is None
        assert polite.process.poll() is None and stubborn.restarts == 0
    finally:
        supervisor._stop_all()
    assert polite.process.poll() is not None
