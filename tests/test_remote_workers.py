"""Remote HTTP workers on Redis + PostgreSQL: real API, local worker and `skillq worker
--remote` processes. A mixed batch runs exactly once each whichever worker takes a job; a
SIGKILLed remote worker's lease expires and its job completes elsewhere; cancel and progress
reach a remote job, and its log reaches the store; only worker tokens may call the worker
routes, and a worker may report only on the attempt it holds.

One stack for the module (short leases: `dead_after_secs = 2`), so the processes start once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.reliability import Stack
from tests.support import (
    ROOT,
    ChildProcess,
    child_env,
    create_postgres_schema,
    drop_postgres_schema,
    postgres_schema_url,
    require_service,
    wait_for,
    write_settings,
)

TERMINAL = {"completed", "failed", "cancelled"}
#: Brokers the stack runs on (PostgreSQL store; SQLite: the embedded default for both).
STACKS = os.environ.get("SKILLQ_REMOTE_TEST_BROKERS", "redis").split(",")


class RemoteStack:
    def __init__(self, stack: Stack, directory: Path) -> None:
        self.stack = stack
        self.directory = directory
        self.remotes: list[ChildProcess] = []
        self.tokens: dict[str, str] = {}
        # The remote worker's own settings: nothing of the server's store or broker.
        remote_dir = directory / "remote"
        remote_dir.mkdir()
        self.remote_settings = write_settings(
            remote_dir, {"server": {"data_dir": str(remote_dir / "data")}}
        )

    def token(self, name: str, queues: str = "default") -> str:
        if name not in self.tokens:
            command = ["-m", "skillq", "auth", "worker-token", "create", name, "--queues", queues]
            result = subprocess.run(
                [sys.executable, *command],
                cwd=ROOT,
                env=child_env(self.stack.settings_path),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 0, result.stderr
            self.tokens[name] = result.stdout.strip()
        return self.tokens[name]

    def start_remote(self, threads: int = 2) -> ChildProcess:
        args = ["-m", "skillq", "worker", "--remote", self.stack.base_url]
        args += ["--token", self.token("remote"), "--threads", str(threads)]
        remote = ChildProcess("remote", args, self.remote_settings, self.directory)
        wait_for(
            lambda: remote.logged("is ready") or not remote.alive(),
            timeout=60,
            what="the remote worker to register",
        )
        assert remote.alive(), remote.log()
        self.remotes.append(remote)
        return remote

    def remote_pid(self, worker_id: str) -> int:
        listed = self.stack.client.get("/api/v1/workers").json()["workers"]
        return next(w["pid"] for w in listed if w["id"] == worker_id)

    def close(self) -> None:
        for remote in self.remotes:
            remote.stop()
        self.stack.close()


@pytest.fixture(scope="module", params=STACKS)
def remote(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RemoteStack]:
    broker = request.param
    directory = tmp_path_factory.mktemp(f"remote-workers-{broker}")
    schema = None
    extra: dict[str, dict[str, Any]] = {}
    if broker != "sqlite":
        require_service("postgres")
        schema = create_postgres_schema()
        extra["storage"] = {"backend": "postgres", "url": postgres_schema_url(schema)}
    stack = Stack.create(broker, directory, extra=extra, heartbeat_secs=0.5, dead_after_secs=2)
    system = RemoteStack(stack, directory)
    try:
        stack.start_api()
        yield system
    finally:
        system.close()
        if schema is not None:
            drop_postgres_schema(schema)


def _post(stack: Stack, path: str, token: str | None, body: Any = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return stack.client.post(path, json=body or {}, headers=headers)


def test_a_mixed_batch_runs_once_each_on_local_and_remote_workers(remote: RemoteStack) -> None:
    stack = remote.stack
    local = stack.start_worker(threads=2, queue="default")
    remote.start_remote(threads=2)
    submitted = [
        stack.submit({"type": "sleep", "params": {"seconds": 0.1, "steps": 2, "echo": n}})
        for n in range(36)
    ] + [
        stack.submit({"type": "sleep", "params": {"seconds": 0, "steps": 1, "fail": True}})
        for _ in range(4)
    ]
    finished = [stack.wait_state(job["id"], TERMINAL, timeout=120) for job in submitted]
    stack.stop_worker(local)
    for n, job in enumerate(finished[:36]):
        assert job["state"] == "completed", job
        assert job["attempts"] == 1, job  # started once: never a second run
        assert job["result"]["echo"] == n
    for job in finished[36:]:
        # The server's retry rules, whichever worker ran each attempt.
        assert job["state"] == "failed" and job["attempts"] == job["max_retries"] + 1, job
        assert job["error"]["type"] == "RuntimeError"
    # Both kinds of worker took jobs from the same queue (a finished job keeps its worker).
    ran_on = {job["worker_id"].startswith("remote-") for job in finished}
    assert ran_on == {True, False}, [job["worker_id"] for job in finished]


def test_progress_and_cancel_reach_a_remote_job(remote: RemoteStack) -> None:
    stack = remote.stack
    if not remote.remotes:
        remote.start_remote()
    job = stack.submit({"type": "sleep", "params": {"seconds": 60, "steps": 600}})
    running = wait_for(
        lambda: (
            (j := stack.job(job["id"]))["state"] == "running" and (j["progress"] or 0) > 0 and j
        ),
        what="the remote job to report progress",
    )
    assert running["worker_id"].startswith("remote-")
    assert running["message"].startswith("slept ")
    assert stack.cancel(job["id"]).status_code == 202
    cancelled = stack.wait_state(job["id"], TERMINAL, timeout=30)
    assert cancelled["state"] == "cancelled", cancelled
    # Its log is complete once it is seen finished, without the worker's own HTTP lines.
    log = stack.client.get(f"/api/v1/jobs/{job['id']}/logs").json()["lines"]
    assert [(line["source"], line["text"]) for line in log] == [
        ("error", "attempt 1 was cancelled")
    ], log


def test_only_worker_tokens_call_worker_routes_and_only_on_their_leases(
    remote: RemoteStack,
) -> None:
    stack = remote.stack
    if not remote.remotes:
        remote.start_remote()
    # auth none: whoever calls is the local admin, a user, not a worker.
    assert _post(stack, "/api/v1/workers/register", None).status_code == 401
    assert _post(stack, "/api/v1/workers/register", "a-user-token").status_code == 403
    assert _post(stack, "/api/v1/workers/register", "skqw_forged").status_code == 401
    job = stack.submit({"type": "sleep", "params": {"seconds": 60, "steps": 600}})
    running = wait_for(
        lambda: (j := stack.job(job["id"]))["state"] == "running" and j,
        what="a remote worker to run the job",
    )
    holder = running["worker_id"]
    other = remote.token("intruder")
    intruder = _post(stack, "/api/v1/workers/register", other).json()["worker_id"]
    report = {"worker_id": intruder, "attempt": running["attempts"], "result": {"forged": True}}
    answer = _post(stack, f"/api/v1/jobs/{job['id']}/complete", other, report)
    assert answer.status_code == 409, answer.text
    # The holder's id with another token is no worker of that token.
    forged = dict(report, worker_id=holder)
    assert _post(stack, f"/api/v1/jobs/{job['id']}/complete", other, forged).status_code == 404
    beat = _post(stack, f"/api/v1/workers/{holder}/heartbeat", other, {"running": [job["id"]]})
    assert beat.status_code == 404
    assert stack.job(job["id"])["state"] == "running"
    stack.cancel(job["id"])
    assert stack.wait_state(job["id"], TERMINAL)["state"] == "cancelled"


def test_a_sigkilled_remote_workers_job_completes_elsewhere(remote: RemoteStack) -> None:
    stack = remote.stack
    while len(remote.remotes) < 2:
        remote.start_remote(threads=1)
    job = stack.submit({"type": "sleep", "params": {"seconds": 3, "steps": 30}})
    first = wait_for(
        lambda: (
            (j := stack.job(job["id"]))["state"] == "running" and (j["progress"] or 0) > 0 and j
        ),
        what="a remote worker to run the job",
    )
    pid = remote.remote_pid(first["worker_id"])
    victim = next(r for r in remote.remotes if r.process.pid == pid)
    os.killpg(victim.process.pid, signal.SIGKILL)
    victim.process.wait()
    remote.remotes.remove(victim)
    victim.stop()
    done = stack.wait_state(job["id"], TERMINAL, timeout=90)
    assert done["state"] == "completed", done
    assert done["attempts"] == 2, done  # the lost attempt counted
    assert done["worker_id"] != first["worker_id"]
