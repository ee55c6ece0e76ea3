"""Job types as plugins: `@skillq.job_type` in a user's package, found through the
`skillq.job_types` entry point or `[jobs] modules`.

The end-to-end test installs the example plugin (examples/hello-plugin) into a fresh venv
and runs its job types through REST and MCP; the others show that a bad plugin stops the
process at start with one line naming it.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.mcp_clients import connect
from tests.support import ROOT, free_port, fresh_venv, wait_for, write_settings

PLUGIN = ROOT / "examples" / "hello-plugin"


def boot(
    modules: dict[str, str],
    tmp_path: Path,
    jobs_modules: list[str],
    more: dict[str, dict] | None = None,
) -> subprocess.CompletedProcess:
    """Imports skillq.actors (what every process does at start) with plugin modules."""
    for name, source in modules.items():
        (tmp_path / f"{name}.py").write_text(source)
    settings = write_settings(
        tmp_path,
        {
            "server": {"data_dir": str(tmp_path / "data")},
            "jobs": {"modules": jobs_modules},
            **(more or {}),
        },
    )
    return subprocess.run(
        [sys.executable, "-c", "from skillq import actors; print(sorted(actors.plugins))"],
        cwd=tmp_path,
        env={
            "SKILLQ_SETTINGS": str(settings),
            "PYTHONPATH": str(tmp_path),
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


GOOD = "import skillq\n\n@skillq.job_type\ndef double(n: int) -> int:\n    return 2 * n\n"


def test_a_module_plugin_is_declared(tmp_path: Path) -> None:
    booted = boot({"mine": GOOD}, tmp_path, ["mine"])
    assert booted.returncode == 0, booted.stderr
    assert booted.stdout.split() == ["['double']"]


@pytest.mark.parametrize(
    ("modules", "listed", "expected"),
    [
        ({}, ["missing_module"], "[jobs] modules: missing_module: cannot import it"),
        (
            {"broken": "import skillq\nraise RuntimeError('boom')\n"},
            ["broken"],
            "RuntimeError: boom",
        ),
        ({"empty": "x = 1\n"}, ["empty"], "empty: declares no @skillq.job_type"),
        (
            {"a": GOOD, "b": GOOD},
            ["a", "b"],
            "[jobs] modules: b: job type 'double' is already declared by [jobs] modules: a",
        ),
        (
            {"clash": "import skillq\n\n@skillq.job_type(name='sleep')\ndef s() -> None: ...\n"},
            ["clash"],
            "job type 'sleep' is a built-in job type's name",
        ),
        (
            {
                "schema": "import skillq\n\n@skillq.job_type(params_schema={'type': 'object',"
                " 'properties': {'n': {'type': 'integr'}}})\ndef f(n): ...\n"
            },
            ["schema"],
            "job type 'f': invalid params_schema",
        ),
        (
            {"rated": "import skillq\n\n@skillq.job_type(rate='5/fortnight')\ndef f(): ...\n"},
            ["rated"],
            "job type 'f': rate: expected COUNT/UNIT such as '10/minute'",
        ),
        (
            {"capped": "import skillq\n\n@skillq.job_type(max_concurrent=0)\ndef f(): ...\n"},
            ["capped"],
            "job type 'f': max_concurrent must be at least 1",
        ),
    ],
    ids=[
        "missing",
        "import-error",
        "no-job-type",
        "duplicate",
        "built-in-name",
        "bad-schema",
        "bad-rate",
        "bad-max-concurrent",
    ],
)
def test_a_bad_plugin_stops_the_start_with_one_line(
    tmp_path: Path, modules: dict[str, str], listed: list[str], expected: str
) -> None:
    booted = boot(modules, tmp_path, listed)
    assert booted.returncode == 2
    lines = booted.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("plugin error: "), booted.stderr
    assert expected in lines[0]


def test_limits_name_job_types_checked_once_plugins_are_declared(tmp_path: Path) -> None:
    limited = "import skillq\n\n@skillq.job_type(max_concurrent=2, rate='10/minute')\n"
    limited += "def capped(n: int) -> int:\n    return n\n"
    more = {"job_types.capped": {"rate": "5/second"}}
    assert boot({"limited": limited}, tmp_path, ["limited"], more).returncode == 0
    booted = boot({"limited": limited}, tmp_path, ["limited"], {"job_types.cappd": {}})
    assert booted.returncode == 2
    (line,) = booted.stderr.strip().splitlines()
    assert "job_types.cappd: unknown job type (known: capped, " in line


def test_settings_override_the_decorators_limits() -> None:
    from dramatiq.brokers.stub import StubBroker
    from dramatiq.middleware import Retries

    from skillq.brokers.job_limits import JobLimits, Limit, limit_from, limits_of
    from skillq.jobs.plugins import _declare, job_type
    from skillq.jobs.types import JobTypeOptions
    from skillq.rates import Rate

    @job_type(max_concurrent=2, rate="10/minute")
    def capped(n: int) -> int:
        return n

    configured = {"capped": limit_from(rate="5/second")}
    broker = StubBroker(middleware=[Retries(), JobLimits(configured), JobTypeOptions()])
    _declare(broker, capped)
    assert limits_of(broker) == {"capped": Limit(2, Rate(5, 1.0))}


@pytest.fixture(scope="module")
def plugin_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the example plugin installed the way pip installs it; skillq and its
    dependencies are this checkout's (borrowed through a .pth file, not reinstalled)."""
    directory = tmp_path_factory.mktemp("plugin-venv")
    source = directory / "hello-plugin"  # built from a copy: the checkout stays clean
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    python = fresh_venv(directory, install=source, with_skillq_checkout=True)
    return python


@pytest.fixture(scope="module")
def plugin_server(plugin_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("plugin-server")
    port = free_port()
    settings = directory / "settings.toml"
    settings.write_text(
        f'[server]\nport = {port}\ndata_dir = "{directory / "data"}"\n'
        '[[schedules]]\nname = "daily-greeting"\ncron = "0 9 * * *"\ntype = "greet"\n'
        'params = { name = "team" }\n'
    )
    env = {"SKILLQ_SETTINGS": str(settings), "PATH": "/usr/bin:/bin", "HOME": str(directory)}
    commands = {
        "api": ["-m", "skillq", "api", "--host", "127.0.0.1", "--port", str(port)],
        "worker": ["-m", "dramatiq", "skillq.actors", "--processes", "1", "--threads", "2"],
    }
    processes = {
        name: subprocess.Popen(
            [plugin_venv, *args],
            cwd=directory,
            env=env,
            stdout=(directory / f"{name}.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for name, args in commands.items()
    }
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        for name, process in processes.items():
            assert process.poll() is None, (directory / f"{name}.log").read_text()
        try:
            return httpx.get(f"{base}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(answers, timeout=60, what="the API with the plugin")
        yield base
    finally:
        for process in processes.values():
            process.terminate()
            process.wait(timeout=30)


def test_the_installed_plugin_is_found_by_its_entry_point(plugin_venv: Path) -> None:
    found = subprocess.run(
        [
            plugin_venv,
            "-c",
            "from skillq.jobs.plugins import plugin_sources\n"
            "print([where for where, _ in plugin_sources([])])",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert found.returncode == 0, found.stderr
    assert "entry point hello = skillq_hello.jobs" in found.stdout


def test_plugin_job_types_run_through_rest(plugin_server: str) -> None:
    http = httpx.Client(base_url=plugin_server, timeout=10)
    types = {t["name"]: t for t in http.get("/api/v1/job-types").json()["job_types"]}
    assert types["greet"]["params_schema"]["required"] == ["name"]
    assert types["price-order"]["queue"] == "default"
    document = http.get("/openapi.json").text
    assert "greet" in document and "price-order" in document

    submitted = http.post(
        "/api/v1/jobs", json={"type": "greet", "params": {"name": "ada", "times": 2}}
    )
    assert submitted.status_code == 202, submitted.text
    url = f"/api/v1/jobs/{submitted.json()['id']}"
    done = wait_for(lambda: (j := http.get(url).json())["state"] in ("completed", "failed") and j)
    assert done["state"] == "completed", done
    assert done["result"] == {"greeting": "hello ada hello ada"}
    assert done["progress"] == 1.0

    priced = http.post(
        "/api/v1/jobs", json={"type": "price-order", "params": {"item": "pen", "quantity": 3}}
    )
    url = f"/api/v1/jobs/{priced.json()['id']}"
    done = wait_for(lambda: (j := http.get(url).json())["state"] in ("completed", "failed") and j)
    assert done["result"] == {"item": "pen", "quantity": 3, "total_cents": 750}

    refused = http.post(
        "/api/v1/jobs", json={"type": "price-order", "params": {"item": "pen", "quantity": 0}}
    )
    assert refused.status_code == 422
    assert refused.json()["error"]["details"][0]["path"] == "params.quantity"
    refused = http.post(
        "/api/v1/jobs", json={"type": "greet", "params": {"name": "x", "shout": True}}
    )
    assert refused.status_code == 422


def test_plugin_job_types_are_mcp_tools(plugin_server: str) -> None:
    async def scenario() -> tuple[set[str], dict]:
        async with connect("http", base_url=plugin_server) as client:
            tools = {tool.name for tool in (await client.list_tools()).tools}
            answer = await client.call_tool("greet", {"name": "mcp"})
            assert not answer.is_error, answer
            return tools, answer.structured_content

    tools, result = asyncio.run(scenario())
    assert {"greet", "price-order"} <= tools
    assert result["greeting"] == "hello mcp"
