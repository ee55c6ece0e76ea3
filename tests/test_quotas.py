"""Per-owner quotas (issue 14): a submit past `[quotas] max_pending` (all types, or one
type's) is refused with REST 429 + Retry-After, MCP tool error `rate_limited`, CLI exit 6;
concurrent submits of one owner never exceed it, on SQLite and PostgreSQL; other owners and
finished jobs do not count.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from skillq import actors
from skillq.api.app import create_app
from skillq.cli import main as cli_main
from skillq.errors import QuotaExceeded
from skillq.jobs.coordinator import JobCoordinator
from skillq.settings import QuotaSettings, StorageSettings
from skillq.storage import jobs, owner_counts
from skillq.storage.database import connection
from tests.test_hostile_values import mcp_call

QUOTAS = QuotaSettings(max_pending=3, retry_after_secs=7, types={"sleep": {"max_pending": 2}})


def _settings(quotas: QuotaSettings = QUOTAS):
    return dataclasses.replace(actors.settings, quotas=quotas)


@pytest.fixture
def client(store: StorageSettings) -> Iterator[TestClient]:
    with TestClient(create_app(_settings()), base_url="http://127.0.0.1:8000") as client:
        yield client


SKILL = {"skill": "text-stats", "tool": "word_count", "input": {"text": "a"}}


def _body(job_type: str) -> dict:
    return {"type": job_type, "params": {"seconds": 0} if job_type == "sleep" else SKILL}


def _submit(client: TestClient, job_type: str = "sleep"):
    return client.post("/api/v1/jobs", json=_body(job_type))


def test_rest_429_with_retry_after_names_the_quota(client: TestClient) -> None:
    assert [_submit(client).status_code for _ in range(2)] == [202, 202]
    refused = _submit(client)
    assert refused.status_code == 429, refused.text
    assert refused.headers["retry-after"] == "7"
    error = refused.json()["error"]
    assert error["code"] == "rate_limited"
    assert "quotas.types.sleep.max_pending" in error["message"]
    assert error["details"][0]["limit"] == 2
    assert error["details"][0]["retry_after_secs"] == 7
    # Another type still fits under the owner's quota of 3, then that one is reached too.
    assert _submit(client, "execute_skill").status_code == 202
    refused = _submit(client, "execute_skill")
    assert refused.status_code == 429
    assert "quotas.max_pending" in refused.json()["error"]["message"]
    # A finished (here: cancelled) job no longer counts.
    first = client.get("/api/v1/jobs", params={"type": "sleep"}).json()["jobs"][0]
    assert client.delete(f"/api/v1/jobs/{first['id']}").status_code == 200
    assert _submit(client).status_code == 202


def test_the_document_describes_the_429(client: TestClient) -> None:
    submit = client.get("/openapi.json").json()["paths"]["/api/v1/jobs"]["post"]
    assert "Retry-After" in submit["responses"]["429"]["headers"]


def test_mcp_answers_a_tool_error_rate_limited(client: TestClient) -> None:
    options = {"skillq/inline_wait_secs": 0}
    for _ in range(2):
        assert not mcp_call(client, "sleep", '{"seconds": 0}', **options).get("isError")
    refused = mcp_call(client, "sleep", '{"seconds": 0}', **options)
    assert refused["isError"] is True, refused
    assert refused["structuredContent"]["error"]["code"] == "rate_limited"


def test_other_owners_do_not_count(store: StorageSettings) -> None:
    coordinator = JobCoordinator(actors.broker, _settings())
    for _ in range(2):
        coordinator.submit_job({"type": "sleep"}, owner="alice")
    with pytest.raises(QuotaExceeded):
        coordinator.submit_job({"type": "sleep"}, owner="alice")
    coordinator.submit_job({"type": "sleep"}, owner="bob")


def test_concurrent_submits_never_exceed_the_quota(store: StorageSettings) -> None:
    """Twelve threads (each its own store connection, as separate API processes have) submit
    at once for one owner; exactly the quota's worth get in."""
    coordinator = JobCoordinator(actors.broker, _settings(QuotaSettings(max_pending=5)))
    start = threading.Barrier(12)
    outcomes: list[str] = []

    def submit() -> None:
        start.wait()
        for _ in range(2):
            try:
                coordinator.submit_job(_body("execute_skill"), owner="racer")
                outcomes.append("ok")
            except QuotaExceeded:
                outcomes.append("refused")

    threads = [threading.Thread(target=submit) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes).count("ok") == 5, outcomes
    with connection():
        assert owner_counts.pending_count("racer") == 5
        assert jobs.list_jobs(owner="racer").total == 5


def test_cli_over_quota_exits_6(store: StorageSettings, monkeypatch) -> None:
    monkeypatch.setattr(actors, "settings", _settings(QuotaSettings(max_pending=1)))
    runner = CliRunner()
    assert runner.invoke(cli_main.app, ["jobs", "submit", "sleep"]).exit_code == 0
    refused = runner.invoke(cli_main.app, ["jobs", "submit", "sleep"])
    assert refused.exit_code == 6, refused.output
    assert "quotas.max_pending" in refused.output
