"""A client from another SDK: the MCP Inspector CLI (TypeScript SDK), over Streamable HTTP in
both protocol eras and over legacy SSE.

The Inspector is an npm package; it is installed once into a cache folder
(`$SKILLQ_TEST_CACHE`, default `~/.cache/skillq-tests`). Without node and npm, or when
npm cannot install it, these tests skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from skillq import actors
from skillq.jobs.types import job_types_of
from tests.support import api_with_worker

VERSION = "2.12.0"
PACKAGE = f"@modelcontextprotocol/inspector@{VERSION}"


@pytest.fixture(scope="module")
def inspector() -> Path:
    cache = Path(os.environ.get("SKILLQ_TEST_CACHE", "~/.cache/skillq-tests")).expanduser()
    prefix = cache / f"mcp-inspector-{VERSION}"
    command = prefix / "node_modules" / ".bin" / "mcp-inspector"
    if command.exists():
        return command
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed for the MCP Inspector")
    prefix.mkdir(parents=True, exist_ok=True)
    installed = subprocess.run(
        ["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund", PACKAGE],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if installed.returncode != 0 or not command.exists():
        pytest.skip(f"npm could not install {PACKAGE}: {installed.stderr[-500:]}")
    return command


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("mcp-inspector")
    sections = {"server": {"data_dir": str(directory / "data")}, "mcp": {"inline_wait_secs": 60}}
    with api_with_worker(directory, sections) as url:
        yield url


def run(inspector: Path, tmp_path: Path, target: list[str], *args: str) -> dict:
    env = dict(os.environ, HOME=str(tmp_path), MCP_CATALOG_PATH=str(tmp_path / "catalog"))
    done = subprocess.run(
        [str(inspector), "--cli", *target, *args, "--format", "json", "-q"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    first_line = done.stdout.strip().splitlines()[0] if done.stdout.strip() else ""
    assert first_line.startswith("{"), (done.returncode, done.stdout, done.stderr)
    return json.loads(first_line)


TARGETS = {
    "http": ["{url}/mcp", "--transport", "http"],
    "http-2026": ["{url}/mcp", "--transport", "http", "--protocol-era", "modern"],
    "sse": ["{url}/mcp/sse", "--transport", "sse"],
}


@pytest.mark.parametrize("target", list(TARGETS))
def test_inspector_lists_and_calls_tools(inspector: Path, base_url: str, tmp_path, target) -> None:
    argv = [part.format(url=base_url) for part in TARGETS[target]]
    tools = run(inspector, tmp_path, argv, "--method", "tools/list")["result"]["tools"]
    listed = {tool["name"]: tool for tool in tools}
    for name, job_type in job_types_of(actors.broker).items():
        assert listed[name]["inputSchema"] == job_type.params_schema
    called = run(
        inspector,
        tmp_path,
        argv,
        "--method",
        "tools/call",
        "--tool-name",
        "sleep",
        "--tool-args-json",
        json.dumps({"seconds": 0.2, "echo": target}),
    )["result"]
    assert called["isError"] is False
    assert called["structuredContent"]["echo"] == target
    refused = run(
        inspector,
        tmp_path,
        argv,
        "--method",
        "tools/call",
        "--tool-name",
        "sleep",
        "--tool-args-json",
        json.dumps({"seconds": "soon"}),
    )["result"]
    assert refused["isError"] is True
    assert refused["structuredContent"]["error"]["details"][0]["path"] == "params.seconds"
