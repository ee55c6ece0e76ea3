"""A whole skillq system on one broker, for the reliability suites (cancel, recovery, chaos).

Each system gets a place of its own on the broker, so it neither sees nor disturbs other
suites' messages, nor those of the same suite run by someone else at the same time: a
temporary SQLite file, a Redis key namespace of its own in database 14, a RabbitMQ virtual
host per test process (created with `rabbitmqctl`, deleted at exit).
"""

from __future__ import annotations

import atexit
import functools
import os
import signal
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support import (
    ChildProcess,
    redis_url,
    require_service,
    start_api,
    stop_all,
    wait_for,
    write_settings,
)

BROKERS = ("sqlite", "redis", "rabbitmq")
REDIS_URL = redis_url(14)
RABBITMQ_VHOST = f"skillq_reliability_{os.getpid()}"
RABBITMQ_URL = f"amqp://guest:guest@127.0.0.1:5672/{RABBITMQ_VHOST}"
#: The session-long stack (`shared_stack`) gets a virtual host of its own: its workers live
#: through the whole run and would otherwise take, and drop as unknown, the messages of the
#: stacks other tests start meanwhile (which share RABBITMQ_VHOST one after another).
SHARED_RABBITMQ_VHOST = f"{RABBITMQ_VHOST}_shared"
TERMINAL = {"completed", "failed", "cancelled"}


@functools.cache
def ensure_rabbitmq_vhost(vhost: str = RABBITMQ_VHOST) -> None:
    subprocess.run(["rabbitmqctl", "add_vhost", vhost], check=True, timeout=60)
    atexit.register(subprocess.run, ["rabbitmqctl", "delete_vhost", vhost], timeout=60, check=False)
    subprocess.run(
        ["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        check=True,
        timeout=60,
    )


def prepare_broker(broker: str) -> None:
    """Make sure the broker answers, and the RabbitMQ virtual host exists."""
    if broker == "sqlite":
        return
    require_service(broker)
    if broker == "rabbitmq":
        ensure_rabbitmq_vhost()


def settings_sections(broker: str, directory: Path, **workers: Any) -> dict[str, dict[str, Any]]:
    sections: dict[str, dict[str, Any]] = {
        "server": {"data_dir": str(directory / "data")},
        "broker": {"backend": broker, "lease_secs": 3},
        "workers": {
            "max_retries": 3,
            "retry_delay_secs": 0,
            "job_timeout_secs": 120,
            "heartbeat_secs": 0.5,
            "dead_after_secs": 3,
            "requeue_pending_after_secs": 30,
            "shutdown_grace_secs": 5,
            **workers,
        },
    }
    if broker == "redis":
        sections["broker"]["url"] = REDIS_URL
        sections["broker"]["namespace"] = f"skillq-test-{uuid.uuid4().hex[:12]}"
    elif broker == "rabbitmq":
        sections["broker"]["url"] = RABBITMQ_URL
    return sections


@dataclass
class Stack:
    """An API and worker processes sharing one settings file."""

    broker: str
    directory: Path
    settings_path: Path
    api: ChildProcess | None = None
    base_url: str = ""
    client: httpx.Client | None = None
    workers: list[ChildProcess] = field(default_factory=list)
    namespace: str | None = None

    @classmethod
    def create(
        cls, broker: str, directory: Path, extra: dict[str, dict[str, Any]] | None = None, **kw: Any
    ) -> Stack:
        prepare_broker(broker)
        sections = settings_sections(broker, directory, **kw)
        for section, values in (extra or {}).items():
            sections.setdefault(section, {}).update(values)
        stack = cls(broker, directory, write_settings(directory, sections))
        stack.namespace = sections["broker"].get("namespace")
        return stack

    def start_api(self) -> None:
        self.api, self.base_url = start_api(self.settings_path, self.directory)
        if self.client is not None:
            self.client.close()
        self.client = httpx.Client(base_url=self.base_url, timeout=10)

    def stop_api(self) -> None:
        if self.api is not None:
            self.api.stop()
            self.api = None

    def start_worker(self, threads: int = 4, queue: str | None = None) -> ChildProcess:
        """`skillq worker`: dramatiq with our shutdown grace period, as in production (a
        pool per queue, or only `queue`'s: one worker process)."""
        args = ["-m", "skillq", "worker", "--processes", "1", "--threads", str(threads)]
        if queue is not None:
            args += ["--queue", queue]
        worker = ChildProcess("worker", args, self.settings_path, self.directory)
        wait_for(
            lambda: worker.logged("Worker process is ready") or not worker.alive(),
            timeout=30,
            what="the worker to boot",
        )
        assert worker.alive(), worker.log()
        self.workers.append(worker)
        return worker

    def kill_worker(self, worker: ChildProcess) -> None:
        """SIGKILL the worker and all its processes, as a crashed machine or the OOM killer."""
        worker.kill_tree()
        self.workers.remove(worker)

    def stop_worker(self, worker: ChildProcess, timeout: float = 60) -> None:
        """SIGTERM to dramatiq's main process only, as `skillq up` does: it passes one SIGTERM
        to its worker processes (SIGTERM to the whole group would deliver two, and dramatiq
        takes a second one as "exit now")."""
        worker.process.send_signal(signal.SIGTERM)
        try:
            worker.process.wait(timeout=timeout)
        finally:
            worker.stop()
            self.workers.remove(worker)

    def close(self) -> None:
        stop_all([*self.workers, *([self.api] if self.api is not None else [])])
        self.workers.clear()
        self.api = None
        if self.client is not None:
            self.client.close()
        if self.namespace is not None:
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            for key in client.scan_iter(f"{self.namespace}:*"):
                client.delete(key)

    # --- the REST API ---

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        assert self.client is not None
        response = self.client.post("/api/v1/jobs", json=body)
        assert response.status_code in (200, 202), response.text
        return response.json()

    def job(self, job_id: str) -> dict[str, Any]:
        assert self.client is not None
        response = self.client.get(f"/api/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def cancel(self, job_id: str) -> httpx.Response:
        assert self.client is not None
        return self.client.delete(f"/api/v1/jobs/{job_id}")

    def wait_state(self, job_id: str, states: set[str], timeout: float = 30) -> dict[str, Any]:
        return wait_for(
            lambda: (job := self.job(job_id))["state"] in states and job,
            timeout=timeout,
            what=f"job {job_id} to be {'/'.join(sorted(states))}",
        )


NAP_TOOL = """\
import json, subprocess, sys
child = subprocess.Popen(["sleep", json.load(sys.stdin)["seconds"]])
print("PROGRESS 0.1 child started", file=sys.stderr, flush=True)
child.wait()
json.dump({"slept": True}, sys.stdout)
"""

NAP_SKILL = """\
name = "napper"
description = "Sleeps in a grandchild process, for cancellation tests."

[[tools]]
name = "nap"
description = "Start `sleep 300` and wait for it."
command = ["{python}", "{skill_dir}/nap.py"]
timeout_secs = 600
kind = "long"

[tools.input_schema]
type = "object"
additionalProperties = false
properties = { seconds = { type = "string" } }
"""


def shared_stack(broker: str, directory: Path) -> Stack:
    """The stack the cancel and delayed-job suites share (`broker_stack` in conftest): the
    `napper` skill, whose tool sleeps in a grandchild process, and the `clock` job type
    (tests/delay_jobs.py), which reports when it started. Started: API and a worker pool."""
    skills = directory / "skills" / "napper"
    skills.mkdir(parents=True)
    (skills / "skill.toml").write_text(NAP_SKILL)
    (skills / "nap.py").write_text(NAP_TOOL)
    extra = {
        "skills": {"paths": [str(directory / "skills")]},
        "jobs": {"modules": ["tests.delay_jobs"]},
    }
    if broker == "rabbitmq":
        ensure_rabbitmq_vhost(SHARED_RABBITMQ_VHOST)
        url = f"amqp://guest:guest@127.0.0.1:5672/{SHARED_RABBITMQ_VHOST}"
        extra["broker"] = {"url": url}
    running = Stack.create(broker, directory, extra=extra)
    try:
        running.start_api()
        running.start_worker()
    except BaseException:
        running.close()
        raise
    return running
