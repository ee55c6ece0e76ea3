"""The dashboard's server side, in process on the embedded store: its static files (open,
locked down, nothing from outside), and the routes it needs beyond the job API (queue
history, oldest pending age, an admin's owner filter) with their refusals.
"""

from __future__ import annotations

import dataclasses
import re
import time
import uuid
from collections.abc import Iterator

import jwt
import pytest
from starlette.testclient import TestClient

from skillq import actors
from skillq.api.app import create_app
from skillq.api.dashboard import STATIC
from skillq.settings import AuthSettings, JwtSettings

SECRET = "dashboard-test-secret-" + "d" * 32


def bearer(subject: str, *roles: str) -> dict[str, str]:
    now = int(time.time())
    claims = {"sub": subject, "roles": list(roles), "iss": "skillq", "aud": "skillq-api"}
    token = jwt.encode({**claims, "iat": now, "exp": now + 600}, SECRET, algorithm="HS256")
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    """auth `jwt`: the page must open without credentials while its data stays closed."""
    auth = AuthSettings(mode="jwt", jwt=JwtSettings(secret=SECRET))
    with TestClient(create_app(dataclasses.replace(actors.settings, auth=auth))) as client:
        yield client


def submit(client: TestClient, headers: dict[str, str]) -> dict:
    response = client.post("/api/v1/jobs", json={"type": "sleep", "params": {}}, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()


def test_the_page_is_open_and_its_data_is_not(client: TestClient) -> None:
    page = client.get("/dashboard", follow_redirects=True)
    assert page.status_code == 200
    assert page.url.path == "/dashboard/"
    assert page.headers["content-type"].startswith("text/html")
    assert '<script src="dashboard.js" defer></script>' in page.text
    for name, kind in [
        ("api.js", "javascript"),
        ("dashboard.js", "javascript"),
        ("dashboard.css", "text/css"),
    ]:
        response = client.get(f"/dashboard/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
    for path in ["/api/v1/jobs", "/api/v1/stats", "/api/v1/stats/history", "/api/v1/workers"]:
        assert client.get(path).status_code == 401, path


def test_the_files_are_locked_down(client: TestClient) -> None:
    response = client.get("/dashboard/")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    assert "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert client.get("/dashboard/dashboard.js").headers["content-security-policy"] == policy


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard/../pyproject.toml",
        "/dashboard/%2e%2e/%2e%2e/pyproject.toml",
        "/dashboard/..%2fdashboard.py",
        "/dashboard/missing.js",
        "/dashboard/%00",
    ],
)
def test_nothing_outside_the_static_folder_is_served(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404, (path, response.status_code)
    assert "[tool.setuptools]" not in response.text and "SECURITY_HEADERS" not in response.text


def test_nothing_is_loaded_from_elsewhere() -> None:
    """The machine may be offline: no CDN, no font service, no inline script or style."""
    html = (STATIC / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=\"[\w-]+\.js\")", html)
    assert " style=" not in html and "<style" not in html
    for path in STATIC.iterdir():
        text = path.read_text()
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.\w+[^\s\"'`)]*", text))
        assert urls <= {"http://www.w3.org/2000/svg"}, (path.name, urls)
        assert "innerHTML" not in text and "eval(" not in text, path.name


def test_history_has_a_bucket_per_minute_and_counts_only_your_jobs(client: TestClient) -> None:
    alice, admin = bearer(f"alice-{uuid.uuid4().hex[:6]}", "submitter"), bearer("root", "admin")
    submit(client, alice)
    mine = client.get("/api/v1/stats/history?minutes=5", headers=alice).json()
    assert mine["minutes"] == 5 and len(mine["buckets"]) == 5
    assert mine["buckets"][-1]["pending"] == 1
    starts = [bucket["start"] for bucket in mine["buckets"]]
    assert starts == sorted(starts) and all(s.endswith(":00Z") for s in starts)
    everyone = client.get("/api/v1/stats/history", headers=admin).json()
    assert len(everyone["buckets"]) == 60
    assert everyone["buckets"][-1]["pending"] >= 1


@pytest.mark.parametrize("query", ["minutes=0", "minutes=1441", "minutes=x", "minutes=-5"])
def test_bad_history_windows_are_422(client: TestClient, query: str) -> None:
    response = client.get(f"/api/v1/stats/history?{query}", headers=bearer("root", "admin"))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"][0]["path"] == "minutes"


def test_stats_name_each_queues_oldest_pending_job(client: TestClient) -> None:
    bob = bearer(f"bob-{uuid.uuid4().hex[:6]}", "submitter")
    assert client.get("/api/v1/stats", headers=bob).json()["oldest_pending"] == {}
    job = submit(client, bob)
    oldest = client.get("/api/v1/stats", headers=bob).json()["oldest_pending"]
    assert oldest[job["queue"]]["created_at"] == job["created_at"]
    assert oldest[job["queue"]]["age_secs"] >= 0
    client.delete(f"/api/v1/jobs/{job['id']}", headers=bob)
    assert client.get("/api/v1/stats", headers=bob).json()["oldest_pending"] == {}


def test_an_admin_filters_jobs_by_owner_and_others_only_by_themselves(
    client: TestClient,
) -> None:
    carol, dave = f"carol-{uuid.uuid4().hex[:6]}", f"dave-{uuid.uuid4().hex[:6]}"
    job = submit(client, bearer(carol, "submitter"))
    submit(client, bearer(dave, "submitter"))
    admin = bearer("root", "admin")
    page = client.get(f"/api/v1/jobs?owner={carol}", headers=admin).json()
    assert [j["id"] for j in page["jobs"]] == [job["id"]] and page["total"] == 1
    own = client.get(f"/api/v1/jobs?owner={carol}", headers=bearer(carol, "viewer")).json()
    assert own["total"] == 1
    refused = client.get(f"/api/v1/jobs?owner={carol}", headers=bearer(dave, "viewer"))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    for owner in ["%00", "x" * 201, ""]:
        bad = client.get(f"/api/v1/jobs?owner={owner}", headers=admin)
        assert bad.status_code == 422 and bad.json()["error"]["details"][0]["path"] == "owner"
    assert client.get("/api/v1/jobs?owner=nobody-at-all", headers=admin).json()["total"] == 0
