"""A whole skillq system on one broker, for the reliability suites (cancel, recovery, chaos).

Each broker gets a place of its own so these tests neither see nor disturb other suites'
messages: a temporary SQLite file, Redis database 14, RabbitMQ virtual host
`skillq_reliability` (created with `rabbitmqctl` when missing).
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support import (
    ChildProcess,
    require_service,
    start_api,
    start_worker,
    wait_for,
    write_settings,
)

BROKERS = ("sqlite", "redis", "rabbitmq")
REDIS_URL = "redis://127.0.0.1:6379/14"
RABBITMQ_VHOST = "skillq_reliability"
RABBITMQ_URL = f"amqp://guest:guest@127.0.0.1:5672/{RABBITMQ_VHOST}"
TERMINAL = {"completed", "failed", "cancelled"}


def ensure_rabbitmq_vhost() -> None:
    listed = subprocess.run(
        ["rabbitmqctl", "list_vhosts", "--quiet"], capture_output=True, text=True, timeout=60
    )
    if RABBITMQ_VHOST in listed.stdout.split():
        return
    subprocess.run(["rabbitmqctl", "add_vhost", RABBITMQ_VHOST], check=True, timeout=60)
    subprocess.run(
        ["rabbitmqctl", "set_permissions", "-p", RABBITMQ_VHOST, "guest", ".*", ".*", ".*"],
        check=True,
        timeout=60,
    )


def prepare_broker(broker: str) -> None:
    """Make sure the broker answers and starts empty (Redis) or exists (RabbitMQ vhost)."""
    if broker == "sqlite":
        return
    require_service(broker)
    if broker == "redis":
        import redis

        redis.Redis.from_url(REDIS_URL).flushdb()
    else:
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

    @classmethod
    def create(
        cls, broker: str, directory: Path, extra: dict[str, dict[str, Any]] | None = None, **kw: Any
    ) -> Stack:
        prepare_broker(broker)
        sections = settings_sections(broker, directory, **kw)
        for section, values in (extra or {}).items():
            sections.setdefault(section, {}).update(values)
        return cls(broker, directory, write_settings(directory, sections))

    def start_api(self) -> None:
        self.api, self.base_url = start_api(self.settings_path, self.directory)
        if self.client is not None:
            self.client.close()
        self.client = httpx.Client(base_url=self.base_url, timeout=10)

    def stop_api(self) -> None:
        if self.api is not None:
            self.api.stop()
            self.api = None

    def start_worker(self, threads: int = 4) -> ChildProcess:
        worker = start_worker(self.settings_path, self.directory, threads=threads)
        self.workers.append(worker)
        return worker

    def kill_worker(self, worker: ChildProcess) -> None:
        """SIGKILL the worker's whole process group, as a crashed machine or the OOM killer."""
        os.killpg(worker.process.pid, signal.SIGKILL)
        worker.process.wait()
        self.workers.remove(worker)

    def close(self) -> None:
        for worker in list(self.workers):
            worker.stop()
        self.workers.clear()
        self.stop_api()
        if self.client is not None:
            self.client.close()

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
