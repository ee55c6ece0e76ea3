"""Host and Origin: a web page cannot reach the API through the user's browser (DNS
rebinding, cross-site requests), on every route but the probes, with the MCP settings'
names or the app-wide ones; and the app grants no other origin anything through CORS.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from skillq import actors
from skillq.api.app import create_app
from skillq.api.trusted_origins import allowed_names, name_allowed
from skillq.settings import McpSettings, ServerSettings, Settings
from tests.support import LOCAL_URL

JOB = {"type": "sleep", "params": {"seconds": 0}}
PROBES = ("/health", "/ready", "/live")


def client_for(base_url: str = LOCAL_URL, **sections: object) -> TestClient:
    settings = dataclasses.replace(actors.settings, **sections)
    return TestClient(create_app(settings), base_url=base_url)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with client_for() as client:
        yield client


def total_jobs(client: TestClient) -> int:
    return client.get("/api/v1/jobs").json()["total"]


def assert_refused(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == code
    assert not any(name.startswith("access-control-") for name in response.headers)


def test_a_rebound_host_cannot_submit_or_read(client: TestClient) -> None:
    before = total_jobs(client)
    evil = {"Host": "evil.example:8000", "Origin": "http://evil.example:8000"}
    assert_refused(client.post("/api/v1/jobs", json=JOB, headers=evil), 400, "invalid_host")
    assert_refused(
        client.post("/api/v1/jobs", json=JOB, headers={"Host": "evil.example"}), 400, "invalid_host"
    )
    assert_refused(
        client.get("/api/v1/jobs", headers={"Host": "evil.example"}), 400, "invalid_host"
    )
    assert_refused(client.get("/metrics", headers={"Host": "evil.example"}), 400, "invalid_host")
    # Not a port: a name that merely starts like an allowed one.
    host = {"Host": "localhost:1.evil.example"}
    assert_refused(client.get("/api/v1/jobs", headers=host), 400, "invalid_host")
    assert total_jobs(client) == before


def test_a_cross_site_page_cannot_submit(client: TestClient) -> None:
    before = total_jobs(client)
    for origin in ("http://evil.example", "null", "http://127.0.0.1.evil.example"):
        response = client.post("/api/v1/jobs", json=JOB, headers={"Origin": origin})
        assert_refused(response, 403, "origin_not_allowed")
    # A CORS preflight is refused too, and grants nothing.
    preflight = client.options(
        "/api/v1/jobs",
        headers={
            "Origin": "http://evil.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-api-key",
        },
    )
    assert_refused(preflight, 403, "origin_not_allowed")
    assert total_jobs(client) == before


def test_loopback_pages_and_clients_without_origin_still_work(client: TestClient) -> None:
    for headers in ({}, {"Origin": "http://localhost:5173"}, {"Origin": LOCAL_URL}):
        response = client.post("/api/v1/jobs", json=JOB, headers=headers)
        assert response.status_code == 202, response.text
        assert "access-control-allow-origin" not in response.headers
    ok = client.get("/api/v1/jobs", headers={"Host": "localhost:8000"})
    assert ok.status_code == 200


def test_probes_answer_any_host_and_origin(client: TestClient) -> None:
    for path in PROBES:
        headers = {"Host": "10.1.2.3:8000", "Origin": "http://evil.example"}
        assert client.get(path, headers=headers).status_code == 200, path


def test_app_wide_names_apply_to_every_route() -> None:
    server = dataclasses.replace(
        actors.settings.server,
        allowed_hosts=("jobs.example.com",),
        allowed_origins=("https://ui.example.com",),
    )
    with client_for("http://jobs.example.com", server=server) as named:
        assert named.post("/api/v1/jobs", json=JOB).status_code == 202
        ui = {"Origin": "https://ui.example.com"}
        assert named.post("/api/v1/jobs", json=JOB, headers=ui).status_code == 202
        # The server's own origin is always allowed (the dashboard).
        own = {"Origin": "http://jobs.example.com"}
        assert named.get("/api/v1/jobs", headers=own).status_code == 200
        loopback = named.get("/api/v1/jobs", headers={"Host": "127.0.0.1:8000"})
        assert_refused(loopback, 400, "invalid_host")
        other = named.post("/api/v1/jobs", json=JOB, headers={"Origin": "https://evil.example"})
        assert_refused(other, 403, "origin_not_allowed")


def test_the_mcp_keys_still_name_the_hosts_for_the_whole_app() -> None:
    mcp = dataclasses.replace(actors.settings.mcp, allowed_hosts=("mcp.example.com",))
    with client_for("http://mcp.example.com", mcp=mcp) as named:
        assert named.get("/api/v1/jobs").status_code == 200
        refused = named.get("/api/v1/jobs", headers={"Host": "127.0.0.1"})
        assert_refused(refused, 400, "invalid_host")


def test_a_server_bound_elsewhere_checks_origin_but_not_host() -> None:
    server = dataclasses.replace(actors.settings.server, host="0.0.0.0")
    with client_for("http://jobs.internal:8000", server=server) as remote:
        assert remote.get("/api/v1/jobs").status_code == 200
        own = {"Origin": "http://jobs.internal:8000"}
        assert remote.post("/api/v1/jobs", json=JOB, headers=own).status_code == 202
        cross = {"Origin": "http://evil.example"}
        assert_refused(
            remote.post("/api/v1/jobs", json=JOB, headers=cross), 403, "origin_not_allowed"
        )


def test_name_patterns() -> None:
    allowed = ("localhost:*", "jobs.example.com")
    assert name_allowed("localhost:8000", allowed)
    assert name_allowed("jobs.example.com", allowed)
    assert not name_allowed("localhost", allowed)
    assert not name_allowed("localhost:", allowed)
    assert not name_allowed("localhost:80.evil.example", allowed)
    assert not name_allowed("jobs.example.com:8000", allowed)
    names = allowed_names(Settings(server=ServerSettings(host="0.0.0.0")))
    assert names.hosts is None and names.origins == ()
    settings = Settings(
        mcp=McpSettings(allowed_hosts=("a",)), server=ServerSettings(allowed_hosts=("b",))
    )
    assert allowed_names(settings).hosts == ("b",)
