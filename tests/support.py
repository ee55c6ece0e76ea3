"""Real processes and real services for the tests: settings files, API and worker processes.

Service-backed tests skip when a server is not answering, unless SKILLQ_REQUIRE_SERVICES=1
(as in CI), where a missing service is a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from skillq.settings import StorageSettings

ROOT = Path(__file__).resolve().parent.parent

SERVICES = {
    "redis": ("127.0.0.1", 6379),
    "rabbitmq": ("127.0.0.1", 5672),
    "postgres": ("127.0.0.1", 5432),
}
#: Which pytest-xdist worker this process is (0 when the suite runs in one process). The
#: suite runs in two processes (README); each gets Redis databases and a RabbitMQ virtual
#: host of its own, so one process's flushes and queue purges never touch the other's jobs.
TEST_PROCESS = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
if TEST_PROCESS > 1:
    raise RuntimeError("the suite's service isolation covers two test processes (-n 2)")


def redis_url(db: int) -> str:
    """Redis database `db` for the first test process, `db - 8` for the second."""
    return f"redis://127.0.0.1:6379/{db - 8 * TEST_PROCESS}"


#: Without xdist the default virtual host; under xdist one per test process, created by
#: `ensure_rabbitmq_vhost` (tests/conftest.py calls it at start-up).
RABBITMQ_VHOST = (
    f"skillq_tests_{os.environ['PYTEST_XDIST_WORKER']}"
    if ("PYTEST_XDIST_WORKER" in os.environ)
    else "/"
)
REDIS_URL = redis_url(15)
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/" + RABBITMQ_VHOST.replace("/", "%2F")
POSTGRES_URL = "postgresql://127.0.0.1:5432/test"


#: The base URL in-process test clients use: a loopback name, which a loopback-bound app
#: accepts as Host (Starlette's default, "testserver", it refuses with 400).
LOCAL_URL = "http://127.0.0.1"


def require_service(name: str) -> None:
    host, port = SERVICES[name]
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        message = f"{name} is not answering on {host}:{port}"
        if os.environ.get("SKILLQ_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)


def ensure_rabbitmq_vhost(vhost: str) -> None:
    """Create `vhost` with guest's permissions (needs rabbitmqctl, as CI and our machines have);
    a missing rabbitmqctl or server is left to the tests' own service checks."""
    if vhost == "/" or not shutil.which("rabbitmqctl"):
        return
    for command in (
        ["add_vhost", vhost],
        ["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
    ):
        subprocess.run(["rabbitmqctl", "-q", *command], capture_output=True, timeout=60)


def require_bwrap() -> None:
    """bwrap must work here when services are required (CI installs it); else skip."""
    from skillq.engine.bubblewrap import probe_bwrap

    probe = probe_bwrap()
    if not probe.works:
        message = f"bwrap cannot run here: {probe.problem}"
        if os.environ.get("SKILLQ_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)


def process_gone(pid: int) -> bool:
    """Dead, or a zombie waiting for init to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        # Reaped before the open, or between the open and the read (ESRCH).
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def sleep_marker() -> str:
    """A `sleep` argument no other process has: a tool's child is found by it from the host,
    whatever PID namespace (sandbox) it runs in, where the PID the tool sees means nothing."""
    return f"{300 + random.random():.9f}"


def host_processes(marker: str) -> list[int]:
    """Live host PIDs with `marker` as one of their arguments."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker.encode() in args and not process_gone(int(entry.name)):
            found.append(int(entry.name))
    return found


def wait_for(predicate: Callable[[], Any], *, timeout: float = 30.0, what: str = "") -> Any:
    """Polls until `predicate()` is truthy; the deadline only bounds the test, it asserts
    nothing about speed."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_settings(directory: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in values.items())
        lines.append("")
    path = directory / "settings.toml"
    path.write_text("\n".join(lines))
    return path


def postgres_schema_url(schema: str) -> str:
    return f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"


def create_postgres_schema() -> str:
    import psycopg2

    schema = f"skillq_test_{uuid.uuid4().hex[:12]}"
    with psycopg2.connect(POSTGRES_URL) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {schema}")
    return schema


def drop_postgres_schema(schema: str) -> None:
    import psycopg2

    conn = psycopg2.connect(POSTGRES_URL)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    conn.close()


@contextlib.contextmanager
def bound_store(backend: str, directory: Path) -> Iterator[StorageSettings]:
    """A fresh, upgraded job store (SQLite file, or its own PostgreSQL schema) bound to the
    models for the duration; the previous binding comes back afterwards. Its job rows must
    keep `tests.store_invariants` when the block ends."""
    from skillq.storage import bind_database, open_database
    from skillq.storage.database import database_proxy
    from skillq.storage.migrations import upgrade

    schema = None
    if backend == "postgres":
        require_service("postgres")
        schema = create_postgres_schema()
        settings = StorageSettings(backend="postgres", url=postgres_schema_url(schema))
    else:
        settings = StorageSettings(backend="sqlite", path=directory / "jobs.db")
    previous = database_proxy.obj
    database = bind_database(open_database(settings.backend, **settings.database_args()))
    try:
        upgrade()
        yield settings
        from tests.store_invariants import ended_exactly_when_closed

        ended_exactly_when_closed()
    finally:
        database.close_all()
        if previous is not None:
            bind_database(previous)
        if schema:
            drop_postgres_schema(schema)


def unreachable_store_url() -> str:
    """A PostgreSQL URL nobody answers at: connections are refused at once."""
    return f"postgresql://skillq@127.0.0.1:{free_port()}/skillq?connect_timeout=2"


@contextlib.contextmanager
def store_outage() -> Iterator[None]:
    """The job store stops answering: the models point at a server that refuses connections;
    the previous binding comes back afterwards."""
    from skillq.storage import bind_database, open_database
    from skillq.storage.database import database_proxy

    previous = database_proxy.obj
    bind_database(open_database("postgres", url=unreachable_store_url()))
    try:
        yield
    finally:
        bind_database(previous)


class JsonHandler(BaseHTTPRequestHandler):
    """Base of the local HTTP test doubles (OIDC issuer, OpenAI-compatible endpoints)."""

    def read_json(self) -> Any:
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

    def send_json(self, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve_http(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serves `handler` on a free loopback port; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def child_env(settings_path: Path) -> dict[str, str]:
    env = dict(os.environ, SKILLQ_SETTINGS=str(settings_path), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


class ChildProcess:
    """A real process of ours (API, worker), logging to a file the test can show on failure."""

    def __init__(self, name: str, args: list[str], settings_path: Path, log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=child_env(settings_path),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        """The log's tail, for a failure message."""
        return self.log_path.read_text(errors="replace")[-4000:]

    def stacks(self) -> str:
        """Every thread's stack in this process and its children, for a failure message
        about a process that stopped making progress (py-spy, from the test extra)."""
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        try:
            dump = subprocess.run(
                [py_spy, "dump", "--subprocesses", "--pid", str(self.process.pid)],
                capture_output=True,
                text=True,
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"no stacks of {self.name}: {error}"
        return dump.stdout + dump.stderr

    def logged(self, text: str) -> bool:
        """Whether the whole log holds `text`: a busy worker's job lines soon push a boot line
        out of the tail that `log` shows."""
        return text in self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill_tree(self) -> None:
        """SIGKILL this process and every process under it, as a crashed machine or the OOM
        killer would. Its process group is not enough: `skillq worker` starts each pool in a
        session of its own, and a pool whose supervisor dies gets SIGTERM (its parent-death
        signal) and shuts down gracefully, finishing writes a SIGKILL would cut short. All
        are frozen (SIGSTOP) first, so none sees another die, or starts a process, before
        every one is killed: its own process group at once, as a crash would stop it, then
        whatever else the walk of its children finds (a walk of /proc takes long enough for
        a short job to end in between)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGSTOP)
        frozen: dict[int, psutil.Process] = {}
        try:
            found = [psutil.Process(self.process.pid)]
        except psutil.NoSuchProcess:
            found = []
        while found:
            for proc in found:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.suspend()
                    frozen[proc.pid] = proc
            found = [
                child
                for proc in list(frozen.values())
                for child in _children(proc)
                if child.pid not in frozen
            ]
        for proc in frozen.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        self.process.wait()
        # The others are reaped by whoever adopted them; a zombie has let go of everything.
        wait_for(
            lambda: all(_dead(proc) for proc in frozen.values()),
            timeout=30,
            what=f"the processes of {self.name} to die",
        )

    def stop(self, timeout: float = 20.0) -> int:
        if self.alive():
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill_tree()
        self._log.close()
        return self.process.returncode


def _children(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children()
    except psutil.NoSuchProcess:
        return []


def _dead(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def stop_all(processes: Iterable[ChildProcess], timeout: float = 20.0) -> None:
    """Stop several processes at once: all get SIGTERM first, then each is waited for (within
    one shared deadline) and SIGKILLed past it. One by one, an API waited out the long-poll
    of a remote worker that had not been told to stop yet."""
    running = [process for process in processes if process.alive()]
    for process in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in running:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.process.wait(timeout=max(0.0, deadline - time.monotonic()))
    for process in processes:
        process.stop(timeout=0)


def start_worker(settings_path: Path, log_dir: Path, *, threads: int = 4) -> ChildProcess:
    worker = ChildProcess(
        "worker",
        ["-m", "dramatiq", "skillq.actors", "--processes", "1", "--threads", str(threads)],
        settings_path,
        log_dir,
    )
    # dramatiq logs this once its consumers run; before that, jobs would just queue.
    try:
        wait_for(
            lambda: worker.logged("Worker process is ready") or not worker.alive(),
            timeout=30,
            what="the worker to boot",
        )
        assert worker.alive(), worker.log()
    except BaseException:
        worker.stop()  # a boot that timed out must not outlive its test, loading the rest
        raise
    return worker


def start_api(settings_path: Path, log_dir: Path) -> tuple[ChildProcess, str]:
    port = free_port()
    api = ChildProcess(
        "api",
        ["-m", "skillq", "api", "--host", "127.0.0.1", "--port", str(port)],
        settings_path,
        log_dir,
    )
    base_url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert api.alive(), api.log()
        try:
            return httpx.get(f"{base_url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(answers, timeout=30, what="the API to answer")
    except BaseException:
        api.stop()  # one that never answered ran on for the rest of the suite
        raise
    return api, base_url


@contextlib.contextmanager
def api_with_worker(directory: Path, sections: dict[str, dict[str, Any]]) -> Iterator[str]:
    """A real API and worker process on one settings file; yields the API's base URL."""
    settings_path = write_settings(directory, sections)
    api, base_url = start_api(settings_path, directory)
    try:
        worker = start_worker(settings_path, directory)
        try:
            yield base_url
        finally:
            worker.stop()
    finally:
        api.stop()


def fresh_venv(directory: Path, *, install: Path, with_skillq_checkout: bool) -> Path:
    """A new venv (no pip of its own) holding `install` (a wheel or a project folder) as pip
    puts it; its dependencies come from this venv's site-packages through a .pth file, not
    reinstalled. `with_skillq_checkout`: also this checkout's skillq (the editable install's
    hook); without it, skillq must come from `install`. Returns the venv's python."""
    venv = directory / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = Path(subprocess.check_output([python, "-c", purelib], text=True).strip())
    ours = Path(sysconfig.get_path("purelib"))
    lines = [str(ours)]
    if with_skillq_checkout:
        lines += [
            line
            for pth in ours.glob("__editable__*skillq*.pth")
            for line in pth.read_text().splitlines()
        ]
    (site / "borrowed-dependencies.pth").write_text("\n".join(lines) + "\n")
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site)]
    subprocess.run([*pip, str(install)], check=True, timeout=300)
    return python
