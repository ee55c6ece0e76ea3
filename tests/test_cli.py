"""The `skillq` command and the worker entry point, run as real processes."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from skillq.cli import supervisor as supervisor_module
from skillq.cli.supervisor import MAX_QUICK_FAILURES, Child, Supervisor
from skillq.settings import load_settings
from tests.support import (
    ROOT,
    child_env,
    free_port,
    process_gone,
    start_worker,
    unreachable_store_url,
    wait_for,
    write_settings,
)

BAD_SETTINGS = {
    "unknown key": ("[broker]\nbakend = 'redis'\n", "broker.bakend: unknown key"),
    "wrong type": ("[workers]\nmax_retries = 'three'\n", "workers.max_retries: expected"),
    "bad value": ("[broker]\nbackend = 'mysql'\n", "broker.backend: must be one of"),
    "missing variable": (
        "[storage]\nbackend = 'postgres'\nurl = '${SKILLQ_TEST_UNSET_VARIABLE}'\n",
        "storage.url: environment variable SKILLQ_TEST_UNSET_VARIABLE is not set",
    ),
}
ENTRY_POINTS = {
    "skillq": [sys.executable, "-m", "skillq", "jobs", "list"],
    "import actors": [sys.executable, "-c", "import actors"],
    "dramatiq actors": [sys.executable, "-m", "dramatiq", "actors", "--processes", "1"],
    "dramatiq skillq.actors": [
        sys.executable,
        "-m",
        "dramatiq",
        "skillq.actors",
        "--processes",
        "1",
    ],
}


def run(args: list[str], settings: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, cwd=ROOT, env=child_env(settings), capture_output=True, text=True, timeout=timeout
    )


def skillq(*args: str, settings: Path) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "skillq", *args], settings)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("case", BAD_SETTINGS)
def test_bad_settings_stop_start_up_with_one_line_naming_the_key(
    tmp_path: Path, entry: str, case: str
) -> None:
    content, expected = BAD_SETTINGS[case]
    settings = tmp_path / "settings.toml"
    settings.write_text(content)
    result = run(ENTRY_POINTS[entry], settings)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "settings error" in line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"settings error in {settings}: {expected}")


def test_explicit_settings_path_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    result = skillq("--settings", str(missing), "db", "status", settings=tmp_path / "x.toml")
    assert result.returncode == 2
    assert result.stderr.strip() == f"settings error in {missing}: file not found"


@pytest.fixture
def embedded(tmp_path: Path) -> Path:
    return write_settings(
        tmp_path,
        {
            "server": {"data_dir": str(tmp_path / "data"), "port": free_port()},
            "workers": {"max_retries": 0, "retry_delay_secs": 0},
        },
    )


def test_db_commands_report_downgrade_and_upgrade_the_schema(embedded: Path) -> None:
    from skillq.storage.migrations import LATEST_VERSION, MIGRATIONS

    versions = [migration.version for migration in MIGRATIONS]
    latest = f"schema version {LATEST_VERSION} of {LATEST_VERSION}"
    assert skillq("db", "upgrade", settings=embedded).stdout.strip() == f"applied {versions}"
    assert skillq("db", "status", settings=embedded).stdout.strip() == latest
    undid = skillq("db", "downgrade", "--to", "0", settings=embedded).stdout.strip()
    assert undid == f"undid {versions[::-1]}"
    status = skillq("db", "status", settings=embedded).stdout
    assert f"schema version 0 of {LATEST_VERSION}" in status
    assert "pending 1: create the job table" in status
    assert skillq("db", "upgrade", settings=embedded).stdout.strip() == f"applied {versions}"


def test_jobs_commands_submit_wait_show_list_and_refuse_bad_input(embedded: Path) -> None:
    worker = start_worker(embedded, embedded.parent, threads=2)
    try:
        done = skillq(
            "jobs",
            "submit",
            "sleep",
            "--params",
            '{"seconds": 0.2, "echo": "hi"}',
            "--wait",
            settings=embedded,
        )
        assert done.returncode == 0, done.stderr
        assert '"state": "completed"' in done.stdout and '"echo": "hi"' in done.stdout

        failed = skillq(
            "jobs",
            "submit",
            "sleep",
            "--params",
            '{"seconds": 0, "fail": true}',
            "--wait",
            settings=embedded,
        )
        assert failed.returncode == 1
        assert '"state": "failed"' in failed.stdout
    finally:
        worker.stop()

    queued = skillq("jobs", "submit", "sleep", "--priority", "high", settings=embedded)
    job_id = queued.stdout.strip()
    shown = skillq("jobs", "show", job_id, settings=embedded)
    assert '"state": "pending"' in shown.stdout and '"priority": 8' in shown.stdout
    assert '"position_in_queue": 0' in shown.stdout
    listing = skillq("jobs", "list", "--state", "completed", settings=embedded).stdout
    assert len(listing.splitlines()) == 1 and "\tcompleted\t" in listing

    bad = skillq("jobs", "submit", "sleep", "--params", '{"seconds": "x"}', settings=embedded)
    assert bad.returncode == 2
    assert "params.seconds" in bad.stderr and "Traceback" not in bad.stderr
    assert skillq("jobs", "show", "no-such-id", settings=embedded).returncode == 3
    assert "4 jobs" not in skillq("jobs", "list", settings=embedded).stdout
    # A bad request is 2 (README), whether the coordinator or the command finds it.
    not_json = skillq("jobs", "submit", "sleep", "--params", "{", settings=embedded)
    assert not_json.returncode == 2 and "--params is not valid JSON" in not_json.stderr
    assert skillq("jobs", "submit", "nope", settings=embedded).returncode == 2
    cancelled = skillq("jobs", "cancel", job_id, settings=embedded)
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    again = skillq("jobs", "cancel", job_id, settings=embedded)
    assert again.returncode == 4 and "only a pending or running job" in again.stderr


def test_jobs_submit_from_file_is_one_batch(embedded: Path) -> None:
    lines = [
        '{"type": "sleep", "params": {"seconds": 0}}',
        "",
        '{"type": "sleep", "priority": "high"}',
        '{"type": "sleep", "delay_secs": 60}',
    ]
    path = embedded.parent / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    made = skillq("jobs", "submit", "--from-file", str(path), settings=embedded)
    assert made.returncode == 0, made.stderr
    ids = made.stdout.split()
    assert len(ids) == 3
    shown = skillq("jobs", "show", ids[1], settings=embedded)
    assert '"priority": 8' in shown.stdout

    path.write_text('{"type": "sleep"}\n{"type": "sleep", "params": {"seconds": "x"}}\n')
    bad = skillq("jobs", "submit", "--from-file", str(path), settings=embedded)
    assert bad.returncode == 2 and "body.jobs[1].params.seconds" in bad.stderr, bad.stderr
    path.write_text('{"type": "sleep"}\n{"type": \n')
    not_json = skillq("jobs", "submit", "--from-file", str(path), settings=embedded)
    assert not_json.returncode == 2 and "line 2 is not valid JSON" in not_json.stderr
    both = skillq("jobs", "submit", "sleep", "--from-file", str(path), settings=embedded)
    assert both.returncode == 2 and "--from-file" in both.stderr
    neither = skillq("jobs", "submit", settings=embedded)
    assert neither.returncode == 2 and "TYPE" in neither.stderr
    listing = skillq("jobs", "list", "--limit", "100", settings=embedded).stdout
    assert len(listing.splitlines()) == 3  # the refused files wrote nothing


def test_skill_commands_exit_through_the_same_table(embedded: Path) -> None:
    none_yet = skillq("skills", "examples", "primes", settings=embedded)
    assert none_yet.returncode == 3
    assert none_yet.stderr.startswith("error: no examples for 'primes' yet")
    bad_input = skillq("run", "primes", "count_primes", "--input", "[", settings=embedded)
    assert bad_input.returncode == 2 and "--input is not valid JSON" in bad_input.stderr
    unreadable = skillq("index", "notes", str(embedded.parent / "nope.json"), settings=embedded)
    assert unreadable.returncode == 2 and "cannot read documents" in unreadable.stderr


def test_workers_status_shows_the_per_owner_running_limits(tmp_path: Path) -> None:
    sections = {
        "server": {"data_dir": str(tmp_path / "data")},
        "quotas": {"max_running": 3},
        "quotas.types.sleep": {"max_running": 1},
    }
    result = skillq("workers", "status", "--json", settings=write_settings(tmp_path, sections))
    assert result.returncode == 0, result.stderr
    owners = json.loads(result.stdout)["owner_limits"]
    assert owners == {"max_running": 3, "types": {"sleep": 1}, "owners": {}}


STORE_COMMANDS = [
    ("db", "status"),
    ("workers", "status"),
    ("jobs", "list"),
    ("jobs", "submit", "sleep"),
]


@pytest.mark.parametrize("command", STORE_COMMANDS)
def test_a_store_outage_exits_5_with_one_line(tmp_path: Path, command: tuple[str, ...]) -> None:
    settings = write_settings(
        tmp_path, {"storage": {"backend": "postgres", "url": unreachable_store_url()}}
    )
    result = skillq(*command, settings=settings)
    assert result.returncode == 5, result.stderr
    assert result.stderr.startswith("error: the job store is unavailable: ")
    # Then where the store is, and which settings file said so (never the password).
    error, hint = result.stderr.splitlines()
    assert hint.startswith("hint: the store is postgres at ") and "Traceback" not in error
    assert f"settings file: {settings}" in hint


def _children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in path.read_text().split()} if path.exists() else set()


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):  # gone before or during the read
        return ""


def test_up_runs_the_system_restarts_a_killed_worker_and_stops_on_sigterm(
    embedded: Path,
) -> None:
    port = int(embedded.read_text().split("port = ")[1].split()[0])
    log_path = embedded.parent / "up.log"
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "skillq", "up"],
        cwd=ROOT,
        env=child_env(embedded),
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:

        def api_answers() -> bool:
            assert supervisor.poll() is None
            try:
                return httpx.get(f"{base_url}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(api_answers, timeout=30, what="the API of skillq up")
        # The API, the scheduler and one worker group per queue, each up once it registers.
        wait_for(
            lambda: httpx.get(f"{base_url}/api/v1/workers").json()["counts"]["alive"] == 5,
            timeout=60,
            what="a worker pool per queue",
        )
        children = _children(supervisor.pid)
        assert len(children) == 2 + 5
        # `skillq worker --queue Q` execs dramatiq, so its command line is dramatiq's.
        worker = next(pid for pid in children if "--queues default" in _command_line(pid))

        job = httpx.post(
            f"{base_url}/api/v1/jobs", json={"type": "sleep", "params": {"seconds": 0.1}}
        )
        assert job.status_code == 202
        job_url = f"{base_url}/api/v1/jobs/{job.json()['id']}"
        wait_for(lambda: httpx.get(job_url).json()["state"] == "completed", what="the job")

        os.kill(worker, signal.SIGKILL)
        wait_for(
            lambda: len(_children(supervisor.pid) - children) == 1,
            timeout=30,
            what="a new worker process",
        )
        second = httpx.post(
            f"{base_url}/api/v1/jobs", json={"type": "sleep", "params": {"seconds": 0}}
        )
        second_url = f"{base_url}/api/v1/jobs/{second.json()['id']}"
        wait_for(lambda: httpx.get(second_url).json()["state"] == "completed", timeout=60)

        everything = _children(supervisor.pid)
        descendants = everything | {p for pid in everything for p in _children(pid)}
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=60) == 0
        wait_for(lambda: all(process_gone(pid) for pid in descendants), timeout=30, what="exit")
        # A clean stop leaves no write-ahead log behind (each process truncates its own).
        settings = load_settings(embedded)
        for database in (settings.storage.path, settings.broker.path):
            wal = Path(f"{database}-wal")
            assert not wal.exists() or wal.stat().st_size == 0, wal
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
        output = log_path.read_text(errors="replace")
    assert "was killed by SIGKILL" in output
    assert "all processes stopped" in output


BAD_SCHEDULES = {
    "unknown type": ('type = "nope"', "schedules[0].type: unknown job type 'nope'"),
    "params off schema": (
        'type = "sleep"\nparams = { seconds = -1 }',
        "schedules[0].params: -1 is less than the minimum of 0",
    ),
    "unknown skill": (
        'type = "execute_skill"\nparams = { skill = "nope", tool = "x" }',
        'schedules[0].params: no skill named "nope"',
    ),
}


def _with_schedule(embedded: Path, schedule: str) -> Path:
    with embedded.open("a") as settings:
        settings.write(f'\n[[schedules]]\nname = "x"\ncron = "* * * * *"\n{schedule}\n')
    return embedded


@pytest.mark.parametrize(
    ("command", "case"),
    [
        (("up",), "unknown type"),
        (("db", "status"), "unknown type"),
        (("db", "status"), "params off schema"),
        (("worker",), "unknown skill"),
    ],
)
def test_a_schedule_that_could_never_fire_stops_every_command_with_one_line(
    embedded: Path, command: tuple[str, ...], case: str
) -> None:
    schedule, expected = BAD_SCHEDULES[case]
    settings = _with_schedule(embedded, schedule)
    # The timeout only ends a regression that loops (as `up` did); it measures nothing.
    result = run([sys.executable, "-m", "skillq", *command], settings, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"settings error in {settings}: {expected}"), result.stderr
    assert result.stdout == ""  # `up` announces the API only once it starts its children


def test_a_valid_schedule_is_checked_without_touching_the_store(embedded: Path) -> None:
    settings = _with_schedule(embedded, 'type = "sleep"\nparams = { seconds = 0 }')
    result = skillq("db", "status", settings=settings)
    assert result.returncode == 0, result.stderr
    # The check declared the job types without configuring a process: no schema upgrade.
    assert result.stdout.splitlines()[0].startswith("schema version 0 of "), result.stdout


def _python_child(name: str, code: str, **options: float) -> Child:
    return Child(name, [sys.executable, "-c", code], **options)


def test_the_supervisor_gives_up_on_a_child_that_keeps_failing_at_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failing = _python_child(
        "api",
        "import sys; print('starting', file=sys.stderr);"
        " sys.exit(print('error: port 8000 is taken', file=sys.stderr) or 3)",
        first_backoff_secs=0.01,
    )
    healthy = _python_child("worker", "import time; time.sleep(120)")
    with caplog.at_level(logging.INFO, logger="skillq.cli.supervisor"):
        code = Supervisor([failing, healthy], grace_secs=10).run()
    assert code == 3
    assert failing.restarts == MAX_QUICK_FAILURES - 1
    assert healthy.restarts == 0
    assert healthy.process is not None and healthy.process.returncode is not None
    gave_up = [r.getMessage() for r in caplog.records if "giving up" in r.getMessage()]
    assert len(gave_up) == 1
    assert gave_up[0].startswith(f"api exited with status 3 at start {MAX_QUICK_FAILURES} times")
    assert gave_up[0].endswith("  | starting\n  | error: port 8000 is taken")


def test_the_supervisor_keeps_restarting_a_child_that_stayed_up_before_failing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(supervisor_module, "HEALTHY_AFTER_SECS", 0.2)
    crashing = _python_child(
        "worker", "import sys, time; time.sleep(0.5); sys.exit(1)", first_backoff_secs=0.01
    )
    supervisor = Supervisor([crashing], grace_secs=10)

    def stop_after_many_restarts() -> None:
        wait_for(lambda: crashing.restarts > MAX_QUICK_FAILURES, timeout=60, what="restarts")
        supervisor.stopping = True

    stopper = threading.Thread(target=stop_after_many_restarts)
    stopper.start()
    try:
        assert supervisor.run() == 0
    finally:
        supervisor.stopping = True
        stopper.join()
    assert crashing.restarts > MAX_QUICK_FAILURES
