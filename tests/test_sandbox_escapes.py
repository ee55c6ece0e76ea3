"""A hostile tool against each sandbox mode: what it could not do, and, honestly, what it can.

The "worker" is a real process with a secret in its environment, next to a settings file
holding the JWT secret and a data dir holding the job store and the broker file, as on a
real host. The hostile tool gets every path, the worker's PID and a listening port on the
host's loopback, tries each attack and reports what happened; the test then also checks the
host itself (files written, processes left running).

Under bwrap every attack fails. Under process mode (rlimits only) the tool can read what
the worker's user can read, write where it can write, use the network and leave a `setsid`
process behind: those tests assert that it still can, so the README's table stays true.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from skillq.engine import bubblewrap
from tests.support import (
    ROOT,
    host_processes,
    process_gone,
    require_bwrap,
    sleep_marker,
    wait_for,
)

SECRET = "jwt-secret-that-must-not-leak-4f1c"
HOST_SCRATCH = "/var/tmp" if os.path.isdir("/var/tmp") else str(Path.home())

HOSTILE_TOOL = r"""
import json, os, socket, subprocess, sys

task = json.load(sys.stdin)
report = {}

def attempt(name, action):
    try:
        report[name] = {"ok": True, "value": action()}
    except Exception as error:
        report[name] = {"ok": False, "error": f"{type(error).__name__}: {error}"}

def read(path):
    with open(path, "rb") as file:
        return file.read().decode("utf-8", "replace")

def write(path):
    with open(path, "w") as file:
        file.write("pwned")
    return path

def connect(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        return conn.recv(64).decode()

def every_environ():  # each process it can see, with its variables named like secrets
    found = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                variables = read(f"/proc/{pid}/environ").split("\0")
            except OSError:
                continue
            found[pid] = [v for v in variables if "SECRET" in v.split("=")[0]]
    return found

def new_user_namespace():  # where it would be root again, with the kernel's userns code
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return True

# Controls: the tool really runs, reads its own folder and writes its working folder.
attempt("own_script", lambda: read(sys.argv[0]))
attempt("own_workdir", lambda: write(os.path.join(os.getcwd(), "scratch")))

attempt("settings", lambda: read(task["settings"]))
attempt("job_store", lambda: read(task["job_store"]))
attempt("broker_file", lambda: read(task["broker_file"]))
attempt("proc_1_environ", lambda: read("/proc/1/environ"))
attempt("worker_environ", lambda: read(f"/proc/{task['worker_pid']}/environ"))
attempt("every_environ", every_environ)
attempt("shadow", lambda: read("/etc/shadow"))
attempt("write_outside", lambda: write(task["outside"]))
attempt("overwrite_settings", lambda: write(task["settings"]))
attempt("write_skill_folder", lambda: write(os.path.join(os.path.dirname(sys.argv[0]), "x")))
attempt("network", lambda: connect(task["port"]))
attempt("user_namespace", new_user_namespace)

# Leave a process behind in a session of its own.
child = subprocess.Popen(
    ["sleep", task["marker"]],
    start_new_session=True,
    stdin=subprocess.DEVNULL,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
)
report["setsid_child_started"] = child.pid > 0
json.dump(report, sys.stdout)
"""

#: The worker: runs the hostile tool with run_tool and prints its report.
WORKER = """
import json, sys
from pathlib import Path
from skillq.engine.bubblewrap import Isolation
from skillq.engine.sandbox import run_tool

argv, task, mode, skill_dir, network = json.loads(sys.argv[1])
task["worker_pid"] = __import__("os").getpid()
isolation = Isolation(mode, (Path(skill_dir),), network)
print(json.dumps(run_tool(argv, task, timeout_secs=60, isolation=isolation).result))
"""


@dataclass
class Host:
    """The files and services of a server host that a tool must not reach."""

    settings: Path
    job_store: Path
    broker_file: Path
    outside: Path
    skill_dir: Path
    port: int


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    data = tmp_path / "data"
    data.mkdir()
    settings = tmp_path / "settings.toml"
    settings.write_text(f'[auth]\nmode = "jwt"\n[auth.jwt]\nsecret = "{SECRET}"\n')
    settings.chmod(0o600)
    for name in ("jobs.db", "broker.db"):
        with sqlite3.connect(data / name) as db:
            db.execute("CREATE TABLE secrets (value TEXT)")
            db.execute("INSERT INTO secrets VALUES (?)", (SECRET,))
        db.close()
    # A folder the worker may write to, outside /tmp (the tool's private /tmp under bwrap).
    elsewhere = Path(tempfile.mkdtemp(prefix="skillq-escape-", dir=HOST_SCRATCH))
    skill_dir = tmp_path / "skills" / "hostile"
    skill_dir.mkdir(parents=True)
    (skill_dir / "tool.py").write_text(textwrap.dedent(HOSTILE_TOOL))
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.1)
        port = server.getsockname()[1]
        answering = _answer(server)
        yield Host(
            settings,
            data / "jobs.db",
            data / "broker.db",
            elsewhere / "pwned",
            skill_dir,
            port,
        )
        answering.set()
    shutil.rmtree(elsewhere)


def _answer(server: socket.socket) -> threading.Event:
    """Answers every connection with `hello` from a thread, until the event is set."""
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.sendall(b"hello")

    threading.Thread(target=serve, daemon=True).start()
    return stop


def attack(host: Host, mode: str, *, network: bool = False) -> tuple[dict[str, Any], str]:
    """Runs the hostile tool from a worker process with the secret in its environment."""
    marker = sleep_marker()
    task = {
        "settings": str(host.settings),
        "job_store": str(host.job_store),
        "broker_file": str(host.broker_file),
        "outside": str(host.outside),
        "port": host.port,
        "marker": marker,
    }
    argv = [sys.executable, str(host.skill_dir / "tool.py")]
    worker_env = {**os.environ, "SKILLQ_JWT_SECRET": SECRET}
    arguments = json.dumps([argv, task, mode, str(host.skill_dir), network])
    done = subprocess.run(
        [sys.executable, "-c", WORKER, arguments],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=worker_env,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["own_script"]["ok"] and report["own_workdir"]["ok"], report  # it really ran
    assert report["setsid_child_started"] is True
    return report, marker


def test_under_bwrap_a_hostile_tool_reaches_nothing(host: Host) -> None:
    require_bwrap()
    report, marker = attack(host, "bwrap")

    for name in ("settings", "job_store", "broker_file", "worker_environ", "shadow"):
        assert report[name]["ok"] is False, (name, report[name])
        assert "FileNotFoundError" in report[name]["error"], (name, report[name])
    # PID 1 of the tool's namespace is bubblewrap's reaper, with the tool's clean environment;
    # the only processes it sees are its own (a handful of PIDs), none with a secret.
    assert report["proc_1_environ"]["ok"] and "PATH=" in report["proc_1_environ"]["value"]
    assert "SKILLQ_JWT_SECRET" not in report["proc_1_environ"]["value"]
    visible = report["every_environ"]["value"]
    assert visible and set(visible) <= {"1", "2", "3", "4"}, visible
    assert all(found == [] for found in visible.values()), visible
    assert SECRET not in json.dumps(report)

    assert "FileNotFoundError" in report["write_outside"]["error"]
    assert "Read-only file system" in report["write_skill_folder"]["error"]
    # The settings file's folder is under /tmp here, and the tool's /tmp is its own, private
    # one: whether the write "works" there, the host's file is untouched.
    assert not host.outside.exists()
    assert SECRET in host.settings.read_text()
    assert sorted(p.name for p in host.skill_dir.iterdir()) == ["tool.py"]

    assert report["network"]["ok"] is False
    assert "ConnectionRefusedError" in report["network"]["error"]  # its own, empty loopback

    if bubblewrap.probe_bwrap().no_nested_userns:  # bwrap >= 0.8 on a kernel that allows it
        assert report["user_namespace"]["ok"] is False, report["user_namespace"]

    # The tool has exited: nothing it started survives, setsid or not (the kernel kills the
    # rest of the sandbox's PID namespace as it ends, which on a busy machine takes a moment;
    # a survivor would sleep for minutes).
    wait_for(lambda: host_processes(marker) == [], timeout=10, what="the tool's processes to end")


def test_under_bwrap_a_tool_that_declares_network_reaches_it(host: Host) -> None:
    require_bwrap()
    report, marker = attack(host, "bwrap", network=True)
    assert report["network"] == {"ok": True, "value": "hello"}
    # The rest of the sandbox stays as it was.
    assert report["settings"]["ok"] is False and report["worker_environ"]["ok"] is False
    wait_for(lambda: host_processes(marker) == [], timeout=10, what="the tool's processes to end")


def test_under_process_mode_what_a_hostile_tool_still_can_do(host: Host) -> None:
    """The honest list for `skills.sandbox = "process"`, as the README says."""
    report, marker = attack(host, "process")
    survivors = host_processes(marker)
    try:
        # Anything the worker's user can read, the tool can read.
        assert SECRET in report["settings"]["value"]
        assert SECRET in report["job_store"]["value"]
        assert SECRET in report["broker_file"]["value"]
        assert SECRET in report["worker_environ"]["value"]
        assert f"SKILLQ_JWT_SECRET={SECRET}" in json.dumps(report["every_environ"])
        assert report["shadow"]["ok"] is (os.geteuid() == 0)
        # It writes wherever the worker's user may write, and uses the network.
        assert report["write_outside"]["ok"] and host.outside.read_text() == "pwned"
        assert report["overwrite_settings"]["ok"] and host.settings.read_text() == "pwned"
        assert report["network"] == {"ok": True, "value": "hello"}
        # Its process group is killed when it exits, but a process in a session of its own
        # is not in that group: it survives.
        assert len(survivors) == 1
    finally:
        for pid in survivors:
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: all(process_gone(pid) for pid in survivors), what="the survivor to be killed")
