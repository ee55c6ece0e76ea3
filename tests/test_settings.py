"""Settings loader: defaults, file lookup, substitution, and one-line errors naming the key."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from skillq.settings import (
    ScheduleSettings,
    Settings,
    SettingsError,
    load_settings,
    settings_error_exit,
)

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "settings.toml"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each test starts in an empty directory with no SKILLQ_SETTINGS, so nothing leaks in."""
    monkeypatch.delenv("SKILLQ_SETTINGS", raising=False)
    monkeypatch.chdir(tmp_path)


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str) -> Settings:
    return load_settings(write(tmp_path / "settings.toml", text))


def error_for(tmp_path: Path, text: str) -> SettingsError:
    with pytest.raises(SettingsError) as info:
        load_text(tmp_path, text)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"settings error in {tmp_path / 'settings.toml'}: ")
    return info.value


def test_defaults_without_file(tmp_path: Path) -> None:
    settings = load_settings()
    home = Path("~/.skillq").expanduser()
    assert settings.source is None
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8000
    assert settings.server.mode == "local"
    assert settings.server.data_dir == home
    assert settings.server.max_body_size == 1048576
    assert settings.broker.backend == "sqlite"
    assert settings.broker.path == home / "broker.db"
    assert settings.broker.url is None
    assert settings.broker.lease_secs == 30
    assert settings.storage.path == home / "jobs.db"
    assert settings.storage.pool_size == 10
    assert (settings.workers.ai_workers, settings.workers.index_workers) == (2, 1)
    assert (settings.workers.skill_workers, settings.workers.processes) == (4, 1)
    assert settings.workers.max_retries == 3
    assert settings.auth.mode == "none"
    assert settings.auth.jwt.secret is None
    assert settings.auth.oidc.provider_url is None
    assert settings.mcp.endpoint == "/mcp"
    assert settings.jobs.default_ttl_hours == 24
    assert settings.jobs.max_ttl_hours == 168
    assert settings.schedules == ()
    # Loading builds the same value as the dataclass defaults.
    assert settings == Settings()


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        load_settings().server.port = 1  # type: ignore[misc]


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    settings = load_text(tmp_path, "")
    assert settings.source == tmp_path / "settings.toml"
    assert dataclasses.replace(settings, source=None) == Settings()


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "settings.toml", "[server]\nport = 1001\n")
    assert load_settings().server.port == 1001

    env_file = write(tmp_path / "env.toml", "[server]\nport = 1002\n")
    monkeypatch.setenv("SKILLQ_SETTINGS", str(env_file))
    assert load_settings().server.port == 1002
    assert load_settings().source == env_file

    explicit = write(tmp_path / "explicit.toml", "[server]\nport = 1003\n")
    assert load_settings(explicit).server.port == 1003
    assert load_settings(str(explicit)).server.port == 1003


def test_shipped_file_matches_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name != "HOME":
            monkeypatch.delenv(name)
    shipped = load_settings(SHIPPED)
    assert shipped.source == SHIPPED
    assert dataclasses.replace(shipped, source=None) == load_settings()


def test_shipped_file_loads_with_empty_environment() -> None:
    code = "from skillq.settings import load_settings; print(load_settings('settings.toml').source)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env={}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(SHIPPED)


def test_relative_paths_follow_the_file(tmp_path: Path) -> None:
    sub = tmp_path / "conf"
    sub.mkdir()
    settings = load_settings(write(sub / "s.toml", '[server]\ndata_dir = "data"\n'))
    assert settings.server.data_dir == sub / "data"
    assert settings.broker.path == sub / "data" / "broker.db"
    assert settings.storage.path == sub / "data" / "jobs.db"


def test_substitution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQ_HOST", "0.0.0.0")
    monkeypatch.setenv("SQ_COLLECTION", "docs")
    monkeypatch.setenv("SQ_EMPTY", "")
    monkeypatch.delenv("SQ_UNSET", raising=False)
    settings = load_text(
        tmp_path,
        """
        [server]
        host = "${SQ_HOST}"
        [auth.jwt]
        issuer = "${SQ_UNSET:-issuer-${SQ_HOST}}"
        secret = "${SQ_UNSET:-}"
        audience = "${SQ_EMPTY:-fallback}"
        [[schedules]]
        name = "nightly"
        cron = "0 3 * * *"
        type = "index_documents"
        params = { collection = "${SQ_COLLECTION}", nested = { docs = ["a-${SQ_HOST}", 7] } }
        """,
    )
    assert settings.server.host == "0.0.0.0"
    assert settings.auth.jwt.secret is None
    assert settings.auth.jwt.audience == "fallback"
    assert settings.schedules == (
        ScheduleSettings(
            name="nightly",
            cron="0 3 * * *",
            type="index_documents",
            params={"collection": "docs", "nested": {"docs": ["a-0.0.0.0", 7]}},
        ),
    )


def test_numbers_and_booleans_from_substitution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SQ_PORT", "9001")
    monkeypatch.setenv("SQ_SSE", "no")
    settings = load_text(
        tmp_path,
        """
        [server]
        port = "${SQ_PORT}"
        [workers]
        max_retries = "${SQ_RETRIES:-7}"
        job_timeout_secs = "${SQ_TIMEOUT:-12.5}"
        [mcp]
        legacy_sse = "${SQ_SSE}"
        """,
    )
    assert settings.server.port == 9001
    assert settings.workers.max_retries == 7
    assert settings.workers.job_timeout_secs == 12.5
    assert settings.mcp.legacy_sse is False


def test_backends_with_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@db/skillq")
    settings = load_text(
        tmp_path,
        """
        [broker]
        backend = "rabbitmq"
        url = "amqp://guest:guest@127.0.0.1:5672/%2F"
        [storage]
        backend = "postgres"
        url = "${DATABASE_URL}"
        """,
    )
    assert settings.broker.url == "amqp://guest:guest@127.0.0.1:5672/%2F"
    assert settings.storage.url == "postgresql://u:p@db/skillq"


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("[servr]\nport = 1\n", "servr", "unknown key"),
        ("[server]\nprot = 1\n", "server.prot", "unknown key"),
        ("[auth.jwt]\nsecrte = 'x'\n", "auth.jwt.secrte", "unknown key"),
        ("[workers]\nmax_retries = 'three'\n", "workers.max_retries", "expected an integer"),
        ("[workers]\nmax_retries = true\n", "workers.max_retries", "expected an integer"),
        ("[mcp]\nenabled = 'maybe'\n", "mcp.enabled", "expected a boolean"),
        ("server = 3\n", "server", "expected a table"),
        ("[broker]\nbackend = 'mysql'\n", "broker.backend", "must be one of sqlite, redis"),
        ("[server]\nport = 70000\n", "server.port", "must be between 1 and 65535"),
        ("[workers]\njob_timeout_secs = 0\n", "workers.job_timeout_secs", "greater than 0"),
        ("[jobs]\ndefault_ttl_hours = 100\nmax_ttl_hours = 50\n", "jobs.default_ttl_hours", ""),
        ("[mcp]\nendpoint = 'mcp'\n", "mcp.endpoint", "must start with '/'"),
        ("[job_types.sleep]\nrate = '5/fortnight'\n", "job_types.sleep.rate", "COUNT/UNIT"),
        ("[job_types.sleep]\nrate = '0/second'\n", "job_types.sleep.rate", "between 1 and"),
        ("[job_types.sleep]\nmax_concurrent = 0\n", "job_types.sleep.max_concurrent", "between"),
        ("[job_types.sleep]\nmax_concurent = 2\n", "job_types.sleep.max_concurent", "did you"),
        ("[job_types]\nsleep = 2\n", "job_types.sleep", "expected a table"),
        ("[quotas]\nmax_running = 0\n", "quotas.max_running", "must be at least 1 (got 0)"),
        ("[jobs]\nmax_batch_jobs = 0\n", "jobs.max_batch_jobs", "between 1 and 10000"),
        (
            "[quotas.types.sleep]\nmax_running = 0\n",
            "quotas.types.sleep.max_running",
            "must be an integer >= 1 (got 0)",
        ),
        (
            "[auth.jwt]\nsecret = '${SQ_UNSET}'\n",
            "auth.jwt.secret",
            "environment variable SQ_UNSET is not set",
        ),
        (
            "[broker]\nbackend = 'redis'\n",
            "broker.url",
            "required when broker.backend is 'redis'",
        ),
        ("[broker]\nbackend = 'redis'\nurl = 'http://x'\n", "broker.url", "redis://"),
        ("[storage]\nbackend = 'postgres'\n", "storage.url", "required when"),
        ("[auth]\nmode = 'jwt'\n", "auth.jwt.secret", "required when auth.mode is 'jwt'"),
        ("[auth]\nmode = 'oidc'\n", "auth.oidc.provider_url", "required when"),
        (
            "[[schedules]]\nname = 'a'\ncron = '61 * * * *'\ntype = 't'\n",
            "schedules[0].cron",
            "invalid cron expression '61 * * * *'",
        ),
        (
            "[[schedules]]\nname = 'a'\ncron = 'every day'\ntype = 't'\n",
            "schedules[0].cron",
            "invalid cron expression",
        ),
        (
            "[[schedules]]\nname = 'a'\ncron = '@daily'\ntype = 't'\n"
            "[[schedules]]\nname = 'a'\ncron = '@hourly'\ntype = 't'\n",
            "schedules[1].name",
            "duplicate schedule name 'a'",
        ),
        ("[[schedules]]\nname = 'a'\ncron = '@daily'\n", "schedules[0].type", "required"),
        (
            "[[schedules]]\nname = 'a'\ncron = '@daily'\ntype = 't'\n"
            "params = { x = '${SQ_UNSET}' }\n",
            "schedules[0].params.x",
            "SQ_UNSET",
        ),
    ],
)
def test_errors_name_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, key: str, fragment: str
) -> None:
    monkeypatch.delenv("SQ_UNSET", raising=False)
    error = error_for(tmp_path, text)
    assert error.key == key
    assert f": {key}: " in str(error)
    assert fragment in str(error)


def test_exact_messages(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    error = error_for(tmp_path, "[broker]\nbackend = 'mysql'\n")
    assert str(error) == (
        f"settings error in {path}: broker.backend: must be one of sqlite, redis, rabbitmq"
        " (got 'mysql')"
    )
    error = error_for(tmp_path, "[workers]\nmax_retries = 'three'\n")
    assert str(error) == (
        f"settings error in {path}: workers.max_retries: expected an integer (got string 'three')"
    )


def test_invalid_toml(tmp_path: Path) -> None:
    error = error_for(tmp_path, "[server]\nport = 1\n\n[broker\n")
    assert error.key is None
    assert "invalid TOML at line 4, column 8: " in str(error)


def test_missing_explicit_or_env_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError, match="file not found"):
        load_settings(tmp_path / "nope.toml")
    monkeypatch.setenv("SKILLQ_SETTINGS", str(tmp_path / "gone.toml"))
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert str(info.value) == (
        f"settings error in {tmp_path / 'gone.toml'}: file not found (from SKILLQ_SETTINGS)"
    )


def test_error_exit_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        settings_error_exit(SettingsError("unknown key", "server.prot", "/x/settings.toml"))
    assert info.value.code == 2
    assert (
        capsys.readouterr().err == "settings error in /x/settings.toml: server.prot: unknown key\n"
    )


def test_error_exit_subprocess(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.toml", "[workers]\nmax_retries = 'three'\n")
    code = (
        "from skillq.settings import load_settings, settings_error_exit, SettingsError\n"
        "try:\n"
        "    load_settings()\n"
        "except SettingsError as error:\n"
        "    settings_error_exit(error)\n"
    )
    env = {**os.environ, "SKILLQ_SETTINGS": str(bad), "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"settings error in {bad}: workers.max_retries: ")
    assert result.stdout == ""
