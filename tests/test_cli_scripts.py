"""The CLI for scripts and people, as real processes: `--json` on every read command, full
ids when piped and on a narrow terminal, `jobs retry/watch`, the submission options, shell
completion, and `--url` mode against a real API (with the errors that name their fix)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from skillq.settings import JwtSettings
from skillq.tokens import mint_token
from tests.support import (
    ROOT,
    api_with_worker,
    child_env,
    free_port,
    start_worker,
    write_settings,
)

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
SECRET = "cli-scripts-secret-" + "k" * 32


def skillq(
    *args: str, settings: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "skillq", *args],
        cwd=ROOT,
        env={**child_env(settings), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def json_of(result: subprocess.CompletedProcess) -> object:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def on_a_terminal(*args: str, settings: Path, columns: int) -> str:
    """What `skillq ARGS` shows on a pseudo-terminal `columns` wide (colours stripped)."""
    controller, terminal = pty.openpty()
    env = {**child_env(settings), "COLUMNS": str(columns), "LINES": "50", "TERM": "xterm"}
    process = subprocess.Popen(
        [sys.executable, "-m", "skillq", *args],
        cwd=ROOT,
        env=env,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        close_fds=True,
    )
    os.close(terminal)
    shown = b""
    try:
        while True:
            ready, _, _ = select.select([controller], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal closed: the process is done
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
        process.wait(timeout=30)
    assert process.returncode == 0, shown
    return ANSI.sub("", shown.decode(errors="replace"))


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A settings file with a running worker; the commands use the store directly."""
    directory = tmp_path_factory.mktemp("cli-local")
    settings = write_settings(
        directory,
        {
            "server": {"data_dir": str(directory / "data"), "port": free_port()},
            "workers": {"max_retries": 0, "retry_delay_secs": 0},
        },
    )
    worker = start_worker(settings, directory, threads=2)
    try:
        yield settings
    finally:
        worker.stop()


def test_submit_options_json_and_an_idempotent_repeat(local: Path) -> None:
    key = f"k-{uuid.uuid4().hex}"
    options = ("--ttl-hours", "2", "--idempotency-key", key, "--trace-id", "trace-7")
    job = json_of(skillq("jobs", "submit", "sleep", *options, "--json", settings=local))
    assert UUID.match(job["id"]) and job["trace_id"] == "trace-7"
    assert job["idempotency_key"] == key
    assert job["expires_at"][:13] > job["created_at"][:13]  # two hours on, not the default
    again = skillq("jobs", "submit", "sleep", "--idempotency-key", key, settings=local)
    assert again.returncode == 0 and again.stdout.strip() == job["id"]


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ("{", "--params is not valid JSON"),
        ("[1, 2]", "--params must be a JSON object"),
        ('{"seconds": "x"}', "params.seconds"),
    ],
)
def test_a_bad_params_exits_2(local: Path, params: str, says: str) -> None:
    bad = skillq("jobs", "submit", "sleep", "--params", params, settings=local)
    assert bad.returncode == 2 and says in bad.stderr and "Traceback" not in bad.stderr


def test_watch_prints_the_outcome_and_retry_runs_a_failed_job_again(local: Path) -> None:
    params = '{"seconds": 0.3, "steps": 3, "echo": "w"}'
    job_id = skillq("jobs", "submit", "sleep", "--params", params, settings=local).stdout.strip()
    watched = skillq("jobs", "watch", job_id, settings=local)
    assert watched.returncode == 0, watched.stderr
    done = json.loads(watched.stdout)
    assert done["state"] == "completed" and done["progress"] == 1.0
    assert done["result"]["echo"] == "w"

    failing = '{"seconds": 0, "fail": true}'
    failed_id = skillq("jobs", "submit", "sleep", "--params", failing, settings=local)
    failed_id = failed_id.stdout.strip()
    failed = skillq("jobs", "watch", failed_id, settings=local)
    assert failed.returncode == 1 and json.loads(failed.stdout)["state"] == "failed"

    retried = json_of(skillq("jobs", "retry", failed_id, settings=local))
    assert retried["id"] == failed_id and retried["state"] == "pending"
    assert retried["attempts"] == 0
    assert json.loads(skillq("jobs", "watch", failed_id, settings=local).stdout)["attempts"] == 1
    # Only a failed or cancelled job retries: a completed one is a conflict (4).
    assert skillq("jobs", "retry", job_id, settings=local).returncode == 4
    assert skillq("jobs", "watch", str(uuid.uuid4()), settings=local).returncode == 3


def test_every_read_command_has_json_with_full_ids(local: Path) -> None:
    job_id = skillq("jobs", "submit", "sleep", settings=local).stdout.strip()
    page = json_of(skillq("jobs", "list", "--json", "--limit", "100", settings=local))
    assert job_id in [job["id"] for job in page["jobs"]]
    assert page["total"] >= 1 and all(UUID.match(job["id"]) for job in page["jobs"])
    assert json_of(skillq("jobs", "show", job_id, "--json", settings=local))["id"] == job_id

    workers = json_of(skillq("workers", "status", "--json", settings=local))
    assert workers["counts"]["alive"] >= 1
    assert all(re.fullmatch(r".+:[0-9]+", w["id"]) for w in workers["workers"])  # host:pid

    status = json_of(skillq("db", "status", "--json", settings=local))
    assert status["current"] == status["latest"] and status["pending"] == []

    skills = json_of(skillq("skills", "list", "--json", settings=local))
    assert {"skill": "primes", "tool": "count_primes"}.items() <= skills[0].items() or any(
        row["skill"] == "primes" for row in skills
    )
    assert all(set(row) >= {"skill", "tool", "kind", "timeout_secs"} for row in skills)

    name = f"robot-{uuid.uuid4().hex[:6]}"
    assert skillq("auth", "api-key", "create", name, settings=local).returncode == 0
    keys = json_of(skillq("auth", "api-key", "list", "--json", settings=local))
    (mine,) = [key for key in keys if key["name"] == name]
    assert mine["role"] == "submitter" and mine["revoked_at"] is None
    assert "key" not in mine and "digest" not in json.dumps(keys)


def test_piped_output_is_plain_lines_with_whole_ids(local: Path) -> None:
    job_id = skillq("jobs", "submit", "sleep", settings=local).stdout.strip()
    lines = skillq("jobs", "list", "--limit", "100", settings=local).stdout.splitlines()
    ids = [line.split("\t")[0] for line in lines]
    assert job_id in ids and all(UUID.match(i) for i in ids)
    assert not any("│" in line or " jobs" in line for line in lines)  # no table, no footer

    workers = json_of(skillq("workers", "status", "--json", settings=local))["workers"]
    lines = skillq("workers", "status", settings=local).stdout.splitlines()
    # The pools first (one line per queue), then one line per worker process, whole ids.
    shown = [line.split("\t")[0] for line in lines[len(lines) - len(workers) :]]
    assert shown == [w["id"] for w in workers]

    keys = skillq("auth", "api-key", "list", settings=local).stdout.splitlines()
    assert keys == [] or all("\t" in line for line in keys)


def test_a_narrow_terminal_gets_a_table_without_shortened_ids(local: Path) -> None:
    job_id = skillq("jobs", "submit", "sleep", settings=local).stdout.strip()
    shown = on_a_terminal("jobs", "list", "--limit", "100", settings=local, columns=50)
    assert "┃" in shown or "│" in shown  # a table, for a person
    assert job_id in shown and "…" not in shown.split(job_id)[0].splitlines()[-1]
    assert re.search(r"\d+ of \d+ jobs", shown)
    workers = json_of(skillq("workers", "status", "--json", settings=local))["workers"]
    shown = on_a_terminal("workers", "status", settings=local, columns=50)
    assert all(worker["id"] in shown for worker in workers)


def test_watch_on_a_terminal_shows_a_progress_bar_then_the_result(local: Path) -> None:
    params = '{"seconds": 1.5, "steps": 5, "echo": "bar"}'
    job_id = skillq("jobs", "submit", "sleep", "--params", params, settings=local).stdout.strip()
    shown = on_a_terminal("jobs", "watch", job_id, settings=local, columns=100)
    assert re.search(r"slept \d of 5 steps", shown), shown  # the bar's description
    assert "━" in shown  # the bar itself
    assert '"echo": "bar"' in shown and '"state": "completed"' in shown


def test_shell_completion_is_printed_for_bash(local: Path) -> None:
    script = subprocess.run(
        [str(Path(sys.executable).parent / "skillq"), "--show-completion", "bash"],
        # Typer detects the shell from the parent processes, which CI (no login shell above
        # pytest) does not have; its own switch makes the shell an argument instead.
        env={**child_env(local), "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert script.returncode == 0, script.stderr
    assert "complete" in script.stdout and "_SKILLQ_COMPLETE" in script.stdout


# --- `--url` mode, against a real API and worker ----------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    directory = tmp_path_factory.mktemp("cli-remote")
    sections = {
        "server": {"data_dir": str(directory / "data")},
        "auth": {"mode": "jwt"},
        "auth.jwt": {"secret": SECRET},
        "workers": {"max_retries": 0, "retry_delay_secs": 0},
    }
    with api_with_worker(directory, sections) as url:
        yield url, directory / "settings.toml"


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """Settings of another machine: its own empty store, so nothing can come from it."""
    return write_settings(tmp_path, {"server": {"data_dir": str(tmp_path / "data")}})


def test_url_mode_talks_to_the_server_as_the_token_says(
    server: tuple[str, Path], elsewhere: Path
) -> None:
    url, _ = server
    token = mint_token(JwtSettings(secret=SECRET), "alice", ["submitter"])
    env = {"SKILLQ_URL": url, "SKILLQ_TOKEN": token}

    job = json_of(
        skillq(
            "jobs", "submit", "sleep", "--params", '{"seconds": 0.2, "steps": 2}',
            "--trace-id", "remote-1", "--json", settings=elsewhere, env=env,
        )
    )  # fmt: skip
    assert job["owner"] == "alice" and job["trace_id"] == "remote-1"
    watched = skillq("jobs", "watch", job["id"], settings=elsewhere, env=env)
    assert watched.returncode == 0, watched.stderr
    assert json.loads(watched.stdout)["state"] == "completed"

    page = json_of(skillq("jobs", "list", "--json", settings=elsewhere, env=env))
    assert [j["id"] for j in page["jobs"]] == [job["id"]] and page["total"] == 1
    lines = skillq("jobs", "list", settings=elsewhere, env=env).stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [job["id"]]
    shown = json_of(skillq("jobs", "show", job["id"], settings=elsewhere, env=env))
    assert shown["result"]["steps"] == 2
    # Nothing went to the local store of `elsewhere`.
    assert json_of(skillq("jobs", "list", "--json", settings=elsewhere))["total"] == 0

    # Cancel and retry through the server; errors keep the CLI's exit statuses.
    pending = json_of(
        skillq(
            "jobs", "submit", "sleep", "--params", '{"seconds": 30}', "--json",
            settings=elsewhere, env=env,
        )
    )  # fmt: skip
    cancelled = json_of(skillq("jobs", "cancel", pending["id"], settings=elsewhere, env=env))
    assert cancelled["id"] == pending["id"]
    flags = ["--url", url, "--token", token]  # the same, as options
    ended = skillq("jobs", "watch", pending["id"], *flags, settings=elsewhere)
    assert ended.returncode == 1 and json.loads(ended.stdout)["state"] == "cancelled"
    retried = json_of(skillq("jobs", "retry", pending["id"], *flags, settings=elsewhere))
    assert retried["state"] == "pending"
    assert skillq("jobs", "cancel", pending["id"], *flags, settings=elsewhere).returncode == 0
    assert skillq("jobs", "show", str(uuid.uuid4()), *flags, settings=elsewhere).returncode == 3
    bad = skillq(
        "jobs", "submit", "sleep", "--params", '{"seconds": "x"}', *flags, settings=elsewhere
    )
    assert bad.returncode == 2 and "params.seconds" in bad.stderr

    # Another user does not see alice's jobs.
    bob = mint_token(JwtSettings(secret=SECRET), "bob", ["submitter"])
    assert (
        skillq(
            "jobs", "show", job["id"], "--url", url, "--token", bob, settings=elsewhere
        ).returncode
        == 3
    )


def test_url_mode_with_an_api_key(server: tuple[str, Path], elsewhere: Path) -> None:
    url, server_settings = server
    name = f"script-{uuid.uuid4().hex[:6]}"
    created = skillq("auth", "api-key", "create", name, settings=server_settings)
    assert created.returncode == 0, created.stderr
    env = {"SKILLQ_URL": url, "SKILLQ_API_KEY": created.stdout.strip()}
    job = json_of(skillq("jobs", "submit", "sleep", "--json", settings=elsewhere, env=env))
    assert job["owner"] == name


def test_a_401_names_the_missing_or_refused_credential(
    server: tuple[str, Path], elsewhere: Path
) -> None:
    url, _ = server
    missing = skillq("jobs", "list", "--url", url, settings=elsewhere)
    assert missing.returncode == 1, missing.stderr
    assert f"the server at {url} needs a credential" in missing.stderr
    assert "--api-key" in missing.stderr and "SKILLQ_TOKEN" in missing.stderr
    assert "Traceback" not in missing.stderr

    refused = skillq("jobs", "list", "--url", url, "--api-key", "nope", settings=elsewhere)
    assert refused.returncode == 1
    assert "refused the API key from --api-key / SKILLQ_API_KEY" in refused.stderr
    both = skillq(
        "jobs", "list", "--url", url, "--api-key", "a", "--token", "b", settings=elsewhere
    )
    assert both.returncode == 2 and "not both" in both.stderr


def test_an_unreachable_server_names_the_url_and_exits_5(elsewhere: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = skillq("jobs", "list", settings=elsewhere, env={"SKILLQ_URL": url})
    assert result.returncode == 5
    assert f"cannot reach the skillq server at {url} (from --url / SKILLQ_URL)" in result.stderr
    assert "hint" not in result.stderr and "Traceback" not in result.stderr
    not_a_url = skillq("jobs", "list", "--url", "no scheme here", settings=elsewhere)
    assert not_a_url.returncode in (2, 5) and "no scheme here" in not_a_url.stderr
