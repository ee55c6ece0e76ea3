"""The Compose stack (compose.yaml), verified without a Docker engine.

First the file itself: valid against the Compose Specification (the `compose-spec`
package's strict models), every named volume declared, every skillq service's command a real
`skillq` command, every variable the stack's settings need provided. Then the stack runs:
each skillq service's command, with exactly the environment Compose would give it, service
host names mapped to 127.0.0.1, the shared volume to one temporary folder and the published
port to a free one, against this machine's PostgreSQL and RabbitMQ: a job flows from the
API to the worker, an index worker's collection is searchable through the API, the API's
healthcheck passes, and the scheduler fires the periodic maintenance work.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import compose_spec
import httpx
import pika
import psycopg2
import pytest
import typer.main
import yaml

from skillq.cli.main import app as cli_app
from tests.support import ROOT, free_port, require_service, wait_for

COMPOSE = ROOT / "compose.yaml"
STACK_SETTINGS = ROOT / "deploy" / "settings.compose.toml"
SKILLQ_SERVICES = ("api", "worker", "scheduler")
#: Where the Dockerfile puts the settings (ENV SKILLQ_SETTINGS) and the shared volume.
IMAGE_SETTINGS = "/etc/skillq/settings.toml"
VOLUME_PATH = "/var/lib/skillq"
_VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def compose() -> compose_spec.PyCompose:
    parsed = compose_spec.PyOptions(apply_merge=True).from_yaml(COMPOSE.read_text())
    parsed.validate()
    return parsed


def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_the_file_follows_the_compose_specification() -> None:
    stack = compose()
    assert set(SKILLQ_SERVICES) <= set(stack.service_names())


def test_the_check_refuses_what_compose_would() -> None:
    text = COMPOSE.read_text()
    for broken in (
        text.replace('command: ["skillq", "api"]', 'comand: ["skillq", "api"]'),
        text.replace("stop_grace_period: 60s", "stop_grace_period: soon"),
        text.replace("service_healthy }", "service_happy }", 1),
    ):
        with pytest.raises(ValueError):
            compose_spec.PyOptions(apply_merge=True).from_yaml(broken).validate()


def test_every_named_volume_is_declared() -> None:
    declared = set(raw()["volumes"])
    stack = compose()
    for name in stack.service_names():
        for volume in stack.get_service(name).volumes or ():
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} mounts undeclared volume {source}"


def test_skillq_services_run_skillq_commands_and_share_the_data_volume() -> None:
    command = typer.main.get_command(cli_app)
    stack = compose()
    for name in SKILLQ_SERVICES:
        service = stack.get_service(name)
        program, sub_name, *rest = service.command
        assert program == "skillq"
        with command.make_context("skillq", [sub_name, "--help"], resilient_parsing=True) as top:
            sub = command.get_command(top, sub_name)
            assert sub is not None, f"{name}: no command {sub_name!r}"
            sub.make_context(sub_name, rest, parent=top)
        assert f"skillq-data:{VOLUME_PATH}" in (service.volumes or ())


def test_the_stack_settings_get_every_variable_they_need() -> None:
    stack = compose()
    needed = {
        name for name, default in _VARIABLE.findall(STACK_SETTINGS.read_text()) if not default
    }
    for name in SKILLQ_SERVICES:
        provided = set(stack.get_service(name).environment or {})
        assert needed <= provided, f"{name} lacks {needed - provided}"


def interpolate(value: str) -> str:
    """Compose's `${VAR:-default}` from this (test) environment, as `docker compose` does."""
    return _VARIABLE.sub(lambda m: os.environ.get(m.group(1)) or m.group(2) or "", value)


def to_loopback(value: str, services: set[str]) -> str:
    """A URL naming a Compose service as its host, pointed at 127.0.0.1 instead."""
    parts = urlsplit(value)
    if not parts.scheme or parts.hostname not in services:
        return value
    netloc = parts.netloc.rsplit("@", 1)
    host = netloc[-1].replace(parts.hostname, "127.0.0.1", 1)
    return urlunsplit(parts._replace(netloc="@".join([*netloc[:-1], host])))


def service_environment(name: str, data_dir: Path, port: int) -> dict[str, str]:
    stack = compose()
    services = set(stack.service_names())
    env = {
        key: to_loopback(interpolate(str(value)), services)
        for key, value in (stack.get_service(name).environment or {}).items()
    }
    # What the image provides (Dockerfile ENV), then the mappings a container gets from
    # Compose: the shared volume, the published port, and a loopback-only bind for tests.
    env.update(
        PATH=os.environ["PATH"],
        SKILLQ_SETTINGS=str(STACK_SETTINGS),
        SKILLQ_DATA_DIR=str(data_dir),
        SKILLQ_HOST="127.0.0.1",
        SKILLQ_PORT=str(port),
        PYTHONUNBUFFERED="1",
        HOME=str(data_dir.parent),
    )
    return env


def reset_compose_database() -> None:
    """The database Compose's postgres service would create (`POSTGRES_DB`, `POSTGRES_USER`)."""
    conn = psycopg2.connect(host="127.0.0.1", dbname="postgres", user="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = 'skillq'")
        if cur.fetchone() is None:
            cur.execute("CREATE ROLE skillq LOGIN PASSWORD 'skillq'")
        cur.execute("DROP DATABASE IF EXISTS skillq WITH (FORCE)")
        cur.execute("CREATE DATABASE skillq OWNER skillq")
    conn.close()


class Service:
    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        command = list(compose().get_service(name).command)
        command[0] = str(Path(sys.executable).parent / command[0])
        self.process = subprocess.Popen(
            command,
            cwd=log_dir,
            env=env,
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Service]]]:
    for service in ("postgres", "rabbitmq"):
        require_service(service)
    reset_compose_database()
    directory = tmp_path_factory.mktemp("compose")
    data_dir = directory / "volume"
    port = free_port()
    running: dict[str, Service] = {}
    try:
        for name in SKILLQ_SERVICES:
            running[name] = Service(name, service_environment(name, data_dir, port), directory)
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            for service in running.values():
                assert service.process.poll() is None, f"{service.name} died:\n{service.log()}"
            try:
                return httpx.get(f"{base}/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=60, what="the stack's API")
        yield base, running
    finally:
        for service in running.values():
            service.stop()


@pytest.mark.services
def test_a_job_flows_from_the_api_to_the_worker(stack) -> None:
    base, services = stack
    submitted = httpx.post(
        f"{base}/api/v1/jobs", json={"type": "sleep", "params": {"seconds": 0.1}}, timeout=10
    )
    assert submitted.status_code == 202, submitted.text
    url = f"{base}/api/v1/jobs/{submitted.json()['id']}"
    done = wait_for(
        lambda: (job := httpx.get(url, timeout=5).json())["state"] == "completed" and job,
        timeout=60,
        what=f"the job on the worker:\n{services['worker'].log()[-3000:]}",
    )
    assert done["worker_id"]


@pytest.mark.services
def test_an_index_workers_collection_is_searchable_through_the_api(stack) -> None:
    base, _ = stack
    documents = [
        {"id": "walrus", "text": "The walrus dozes on the ice floe."},
        {"id": "heron", "text": "A grey heron waits in the reeds."},
    ]
    submitted = httpx.post(
        f"{base}/api/v1/jobs",
        json={"type": "index_documents", "params": {"collection": "zoo", "documents": documents}},
        timeout=10,
    )
    assert submitted.status_code == 202, submitted.text
    url = f"{base}/api/v1/jobs/{submitted.json()['id']}"
    wait_for(lambda: httpx.get(url, timeout=5).json()["state"] == "completed", timeout=60)
    found = httpx.get(f"{base}/api/v1/collections/zoo/search", params={"q": "walrus"}, timeout=10)
    assert found.status_code == 200, found.text
    assert found.json()["hits"][0]["id"] == "walrus"


@pytest.mark.services
def test_the_api_healthcheck_passes(stack) -> None:
    base, _ = stack
    port = base.rsplit(":", 1)[1]
    check = list(compose().get_service("api").healthcheck.test)
    assert check[0] == "CMD"
    command = [sys.executable if part == "python" else part for part in check[1:]]
    command = [part.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for part in command]
    assert subprocess.run(command, timeout=30).returncode == 0


@pytest.mark.services
def test_the_scheduler_fires_the_periodic_maintenance(stack) -> None:
    """periodiq fires on minute boundaries: the every-minute stale-job recovery is scheduled
    within ~60 s and the worker takes it off the maintenance queue."""
    _, services = stack
    wait_for(
        # Not the schedule periodiq prints at start: the line it logs when it sends one.
        lambda: re.search(r"Scheduling .*recover_stale_jobs", services["scheduler"].log()),
        timeout=80,
        what=f"a scheduled maintenance message:\n{services['scheduler'].log()[-2000:]}",
    )
    connection = pika.BlockingConnection(
        pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2F")
    )
    try:
        channel = connection.channel()

        def drained() -> bool:
            queue = channel.queue_declare("maintenance", passive=True, durable=True)
            return queue.method.message_count == 0 and queue.method.consumer_count >= 1

        wait_for(drained, timeout=30, what="the worker to take the maintenance message")
    finally:
        connection.close()
