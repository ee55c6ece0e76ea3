"""The sandbox through the real path, in each mode: `skills.sandbox` in the settings, the
worker's start-up line, `/health`, and `execute_skill` jobs whose tool tries to read the
running server's settings file and to reach the API over the network, with and without
`network = true` in its `skill.toml`. Also the settings key and the manifest key alone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import textwrap
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from skillq.api.app import create_app
from skillq.engine import bubblewrap
from skillq.engine.skills import SkillError, SkillLibrary
from skillq.errors import SettingsError
from skillq.settings import load_settings
from tests.support import api_with_worker, require_bwrap, wait_for

PROBE_TOOL = """
import json, socket, sys

task = json.load(sys.stdin)
seen = {}
try:
    seen["settings"] = open(task["settings"]).read()
except OSError as error:
    seen["settings"] = type(error).__name__
try:
    with socket.create_connection(("127.0.0.1", task["port"]), timeout=5) as conn:
        conn.sendall(b"GET /live HTTP/1.0\\r\\n\\r\\n")
        seen["api"] = conn.recv(12).decode()
except OSError as error:
    seen["api"] = type(error).__name__
json.dump(seen, sys.stdout)
"""

PROBE_SKILL = """
name = "probe"
[[tools]]
name = "offline"
command = ["{python}", "{skill_dir}/probe.py"]
[[tools]]
name = "online"
command = ["{python}", "{skill_dir}/probe.py"]
network = true
"""


def probe_skill(root: Path) -> Path:
    folder = root / "probe"
    folder.mkdir(parents=True)
    (folder / "skill.toml").write_text(PROBE_SKILL)
    (folder / "probe.py").write_text(textwrap.dedent(PROBE_TOOL))
    return root


def run_job(client: httpx.Client, tool: str, input: dict) -> dict:
    params = {"skill": "probe", "tool": tool, "input": input}
    response = client.post("/api/v1/jobs", json={"type": "execute_skill", "params": params})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]

    def finished() -> dict | None:
        job = client.get(f"/api/v1/jobs/{job_id}").json()
        return job if job["state"] in ("completed", "failed", "cancelled") else None

    job = wait_for(finished, timeout=60, what=f"{tool} to finish")
    assert job["state"] == "completed", job
    return job["result"]["output"]


def test_jobs_run_in_the_configured_sandbox(tmp_path: Path, sandbox_mode: str) -> None:
    skills = probe_skill(tmp_path / "skills")
    sections = {
        "server": {"data_dir": str(tmp_path / "data")},
        "skills": {"paths": [str(skills)], "sandbox": sandbox_mode},
    }
    with api_with_worker(tmp_path, sections) as base_url:
        settings_path = tmp_path / "settings.toml"
        worker_log = "\n".join(p.read_text() for p in tmp_path.glob("worker-*.log"))
        with httpx.Client(base_url=base_url, timeout=30) as client:
            sandbox = client.get("/health").json()["sandbox"]
            port = int(base_url.rsplit(":", 1)[1])
            task = {"settings": str(settings_path), "port": port}
            offline = run_job(client, "offline", task)
            online = run_job(client, "online", task)

    assert sandbox["setting"] == sandbox["mode"] == sandbox_mode and sandbox["usable"]
    assert f"tool sandbox: {sandbox_mode}" in worker_log
    if sandbox_mode == "bwrap":
        assert offline == {"settings": "FileNotFoundError", "api": "ConnectionRefusedError"}
        assert online["settings"] == "FileNotFoundError"
        assert online["api"].startswith("HTTP/1.")  # network = true: the host's network
    else:
        for seen in (offline, online):  # process mode: what the worker's user can reach
            assert seen["settings"] == settings_path.read_text()
            assert seen["api"].startswith("HTTP/1.")


def test_auto_is_bwrap_where_it_works() -> None:
    require_bwrap()
    status = bubblewrap.status("auto")
    assert status.to_dict() == {
        "setting": "auto",
        "mode": "bwrap",
        "bwrap": True,
        "usable": True,
        "problem": None,
    }
    assert status.describe().startswith("tool sandbox: bwrap")


def test_the_sandbox_setting_takes_only_known_modes(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text("")
    assert load_settings(path).skills.sandbox == "auto"  # the default
    path.write_text('[skills]\nsandbox = "process"\n')
    assert load_settings(path).skills.sandbox == "process"
    path.write_text('[skills]\nsandbox = "chroot"\n')
    with pytest.raises(SettingsError, match=r"skills\.sandbox: must be one of auto, bwrap"):
        load_settings(path)


def test_network_in_a_manifest_is_a_boolean_and_off_by_default(tmp_path: Path) -> None:
    skill = SkillLibrary([probe_skill(tmp_path)]).find("probe")
    assert (skill.tool("offline").network, skill.tool("online").network) == (False, True)
    assert skill.tool("online").to_dict()["network"] is True
    manifest = tmp_path / "probe" / "skill.toml"
    manifest.write_text(PROBE_SKILL.replace("network = true", 'network = "yes"'))
    with pytest.raises(SkillError, match=r"tools\[1\] \(online\): network must be true or false"):
        SkillLibrary([tmp_path]).find("probe")
    assert json.loads(json.dumps(skill.to_dict()))["tools"][0]["network"] is False


@pytest.fixture
def no_bwrap(monkeypatch: pytest.MonkeyPatch) -> bubblewrap.BwrapProbe:
    """This machine as one without a working bwrap (a container forbidding namespaces)."""
    broken = bubblewrap.BwrapProbe(None, False, "bwrap is not installed")
    monkeypatch.setattr(bubblewrap, "probe_bwrap", lambda: broken)
    return broken


@pytest.mark.parametrize(
    ("setting", "level", "line"),
    [
        ("auto", logging.WARNING, "tool sandbox: process (rlimits only): bwrap cannot run here"),
        ("bwrap", logging.ERROR, "bwrap cannot run here (bwrap is not installed); skill tools"),
        ("process", logging.INFO, "tool sandbox: process (rlimits only, chosen by skills"),
    ],
)
def test_the_worker_says_at_start_when_tools_are_not_in_bwrap(
    no_bwrap: bubblewrap.BwrapProbe,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    setting: str,
    level: int,
    line: str,
) -> None:
    from skillq.actors import broker
    from skillq.actors import skills as skill_actors

    settings = skill_actors.settings
    chosen = dataclasses.replace(settings.skills, sandbox=setting)
    monkeypatch.setattr(skill_actors, "settings", dataclasses.replace(settings, skills=chosen))
    with caplog.at_level(logging.INFO, logger=skill_actors.__name__):
        skill_actors.SandboxReport().after_process_boot(broker)
    assert [(r.levelno, line in r.getMessage()) for r in caplog.records] == [(level, True)]


def test_health_reports_a_sandbox_without_bwrap(no_bwrap: bubblewrap.BwrapProbe) -> None:
    with TestClient(create_app()) as client:
        health = client.get("/health")
    assert health.status_code == 200
    assert health.json()["sandbox"] == {
        "setting": "auto",
        "mode": "process",
        "bwrap": False,
        "usable": True,
        "problem": "bwrap is not installed",
    }
