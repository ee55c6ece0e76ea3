"""The three skill-engine job types end to end: REST submit, a real worker process on the
embedded SQLite default, results and progress read back from the store, search served by
the API process from what the worker indexed, and the CLI waiting on jobs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support import (
    ROOT,
    ChildProcess,
    child_env,
    start_api,
    start_worker,
    wait_for,
    write_settings,
)

BAD_OUTPUT_SKILL = r"""
name = "bad-output"
description = "Prints text that is not JSON, or JSON that Python parses but no client can read."

[[tools]]
name = "chatter"
command = ["{python}", "-c", "print('this is not JSON')"]
timeout_secs = 10

[[tools]]
name = "nan"
command = ["{python}", "-c", 'print("{\"x\": [1, NaN]}")']
timeout_secs = 10

[[tools]]
name = "surrogate"
command = ["{python}", "-c", 'print("{\"y\": \"\\udfff\"}")']
timeout_secs = 10
"""


@dataclass
class System:
    settings_path: Path
    client: httpx.Client
    api: ChildProcess
    worker: ChildProcess

    def run(self, job_type: str, params: dict) -> dict:
        response = self.client.post("/api/v1/jobs", json={"type": job_type, "params": params})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]

        def finished() -> dict | None:
            job = self.client.get(f"/api/v1/jobs/{job_id}").json()
            return job if job["state"] in ("completed", "failed", "cancelled") else None

        return wait_for(finished, timeout=60, what=f"{job_type} to finish\n{self.worker.log()}")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "skillq", *args],
            cwd=ROOT,
            env=child_env(self.settings_path),
            capture_output=True,
            text=True,
            timeout=120,
        )


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    base = tmp_path_factory.mktemp("skill-engine")
    skills = base / "skills"
    shutil.copytree(ROOT / "skills", skills, ignore=shutil.ignore_patterns("__pycache__"))
    (skills / "bad-output").mkdir()
    (skills / "bad-output" / "skill.toml").write_text(BAD_OUTPUT_SKILL)
    settings_path = write_settings(base, {"server": {"data_dir": str(base / "data")}})
    with settings_path.open("a") as handle:
        handle.write(f"[skills]\npaths = [{json.dumps(str(skills))}]\n")
    worker = start_worker(settings_path, base)
    api, base_url = start_api(settings_path, base)
    with httpx.Client(base_url=base_url, timeout=30) as client:
        yield System(settings_path, client, api, worker)
    api.stop()
    worker.stop()


def test_job_types_are_listed_with_their_queues_and_schemas(system: System) -> None:
    response = system.client.get("/api/v1/job-types")
    assert response.status_code == 200
    types = {t["name"]: t for t in response.json()["job_types"]}
    assert {name: types[name]["queue"] for name in types if name != "sleep"} == {
        "index_documents": "index",
        "execute_skill": "skill",
        "generate_examples": "ai",
    }
    for name in ("index_documents", "execute_skill", "generate_examples"):
        assert types[name]["params_schema"]["type"] == "object"
        assert types[name]["description"]


def test_indexed_documents_are_searchable_through_the_api(system: System) -> None:
    docs = [
        {"id": f"d{i}", "text": f"note {i} about item{i}", "metadata": {"i": i}} for i in range(300)
    ]
    job = system.run("index_documents", {"collection": "notes", "documents": docs})
    assert job["state"] == "completed", job
    assert (job["result"]["added"], job["progress"]) == (300, 1.0)
    hits = system.client.get("/api/v1/collections/notes/search", params={"q": "item42", "k": 3})
    assert hits.status_code == 200
    assert hits.json()["hits"][0] == {
        "id": "d42",
        "score": hits.json()["hits"][0]["score"],
        "text": "note 42 about item42",
        "metadata": {"i": 42},
        "bm25": hits.json()["hits"][0]["bm25"],
        "similarity": None,
    }
    docs[7]["text"] = "rewritten about walrus"
    job = system.run("index_documents", {"collection": "notes", "documents": docs})
    assert (job["result"]["updated"], job["result"]["unchanged"]) == (1, 299)
    first = system.client.get("/api/v1/collections/notes/search", params={"q": "walrus"})
    assert first.json()["hits"][0]["id"] == "d7"
    missing = system.client.get("/api/v1/collections/nothing/search", params={"q": "x"})
    assert missing.status_code == 404
    found = system.cli("search", "notes", "walrus", "-k", "2")
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)[0]["id"] == "d7"
    assert system.cli("search", "nothing", "walrus").returncode == 3


def test_cli_indexes_and_searches_the_owner_it_names(system: System, tmp_path: Path) -> None:
    source = tmp_path / "docs.json"
    source.write_text(json.dumps([{"id": "o1", "text": "ocelot den"}]))
    done = system.cli("index", "theirs", str(source), "--owner", "alice")
    assert done.returncode == 0, done.stderr
    found = system.cli("search", "theirs", "ocelot", "--owner", "alice")
    assert found.returncode == 0, found.stderr
    assert [hit["id"] for hit in json.loads(found.stdout)] == ["o1"]
    # Not local's (the CLI's and auth mode none's owner), so not the API caller's either.
    assert system.cli("search", "theirs", "ocelot").returncode == 3
    api = system.client.get("/api/v1/collections/theirs/search", params={"q": "ocelot"})
    assert api.status_code == 404
    named = system.client.get(
        "/api/v1/collections/theirs/search", params={"q": "ocelot", "owner": "alice"}
    )
    assert [hit["id"] for hit in named.json()["hits"]] == ["o1"]


def test_cli_lists_and_shows_skills(system: System) -> None:
    listed = system.cli("skills", "list")
    assert listed.returncode == 0, listed.stderr
    assert all(name in listed.stdout for name in ("primes", "count_primes", "bad-output"))
    shown = system.cli("skills", "show", "primes")
    assert json.loads(shown.stdout)["tools"][0]["kind"] == "long"
    refused = system.cli("skills", "show", "../primes")
    assert refused.returncode == 2 and "invalid skill name" in refused.stderr


def test_a_long_tool_runs_in_the_sandbox_and_reports_progress(system: System) -> None:
    params = {"skill": "primes", "tool": "count_primes", "input": {"limit": 200_000, "segments": 4}}
    job = system.run("execute_skill", params)
    assert job["state"] == "completed", job
    assert job["result"]["output"] == {"limit": 200_000, "primes_below": 17984}
    assert job["progress"] == 1.0
    assert job["message"] == "sieved 200000 of 200000"


def test_bad_tool_output_and_bad_input_fail_the_job_clearly(system: System) -> None:
    job = system.run("execute_skill", {"skill": "bad-output", "tool": "chatter"})
    assert job["state"] == "failed" and job["attempts"] == 1  # a tool is never retried
    assert job["error"]["type"] == "ToolBadOutput"
    assert "not JSON" in job["error"]["message"]

    def refused(job_type: str, params: dict, status: int = 422) -> dict:
        response = system.client.post("/api/v1/jobs", json={"type": job_type, "params": params})
        assert response.status_code == status, response.text
        return response.json()["error"]

    error = refused("execute_skill", {"skill": "text-stats", "tool": "word_count", "input": {}})
    assert error["message"] == "input does not match the schema of text-stats/word_count"
    assert error["details"] == [
        {"path": "params.input", "message": 'missing required properties: "text"'}
    ]
    error = refused("execute_skill", {"skill": "../skills", "tool": "x"})
    assert error["details"][0]["path"] == "params.skill"
    error = refused("execute_skill", {"skill": "nonexistent", "tool": "x"}, 404)
    assert error["message"] == 'no skill named "nonexistent"'
    error = refused("execute_skill", {"skill": "primes", "tool": "nope"}, 404)
    assert error["message"] == 'skill "primes" has no tool "nope"'
    error = refused("generate_examples", {"skill": "primes", "tool_names": ["nope"]}, 404)
    assert error["message"] == 'skill "primes" has no tool "nope"'


def test_a_tool_output_that_cannot_be_stored_fails_the_job_once(system: System) -> None:
    """Python parses NaN and lone surrogates; stored, they broke every listing."""
    for tool, why in [("nan", "NaN is not JSON"), ("surrogate", "output.y: not valid Unicode")]:
        job = system.run("execute_skill", {"skill": "bad-output", "tool": tool})
        assert (job["state"], job["attempts"], job["result"]) == ("failed", 1, None), job
        assert job["error"]["type"] == "ToolBadOutput"
        assert why in job["error"]["message"]
    listing = system.client.get("/api/v1/jobs", params={"limit": 100})
    assert listing.status_code == 200, listing.text


def test_examples_are_generated_stored_and_shown(system: System) -> None:
    params = {"skill": "text-stats", "examples_per_tool": 3, "seed": 5}
    job = system.run("generate_examples", params)
    assert job["state"] == "completed", job
    assert {tool: len(items) for tool, items in job["result"]["tools"].items()} == {
        "word_count": 3,
        "keywords": 3,
    }
    shown = system.cli("skills", "examples", "text-stats")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["tools"] == job["result"]["tools"]


def test_cli_waits_for_a_job_or_leaves_it_in_the_background(system: System) -> None:
    done = system.cli("run", "text-stats", "word_count", "--input", '{"text": "a b c"}')
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["output"]["words"] == 3
    background = system.cli("enhance", "primes", "--per-tool", "2", "--background")
    assert background.returncode == 0, background.stderr
    job_id = background.stdout.strip()
    assert f"skillq jobs show {job_id}" in background.stderr
    wait_for(
        lambda: system.client.get(f"/api/v1/jobs/{job_id}").json()["state"] == "completed",
        what="the background enhance job",
    )
    bad = system.cli("run", "text-stats", "word_count", "--input", "{not json")
    assert bad.returncode == 2 and "--input is not valid JSON" in bad.stderr


def test_cancelling_a_running_skill_job_kills_its_tool(system: System) -> None:
    params = {
        "skill": "primes",
        "tool": "count_primes",
        "input": {"limit": 10**10, "segments": 1000},
    }
    response = system.client.post("/api/v1/jobs", json={"type": "execute_skill", "params": params})
    job_id = response.json()["id"]
    wait_for(
        lambda: system.client.get(f"/api/v1/jobs/{job_id}").json()["progress"],
        what="the tool's first progress report",
    )
    assert system.client.delete(f"/api/v1/jobs/{job_id}").status_code in (200, 202)
    job = wait_for(
        lambda: (
            (j := system.client.get(f"/api/v1/jobs/{job_id}").json())["state"] != "running" and j
        ),
        what="the job to stop",
    )
    assert job["state"] == "cancelled", job
    # The worker keeps serving jobs.
    done = system.run(
        "execute_skill", {"skill": "text-stats", "tool": "word_count", "input": {"text": "x"}}
    )
    assert done["state"] == "completed"
