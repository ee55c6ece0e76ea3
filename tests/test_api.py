"""Every REST route of DESIGN.md in auth mode `none`, in process on the embedded store:
the answers, the error envelope on every error path, pagination, filters and limits.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from skillq.api.app import create_app
from skillq.storage import jobs
from skillq.storage.database import connection
from tests.support import LOCAL_URL, store_outage


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(), base_url=LOCAL_URL) as client:
        yield client


def submit(client: TestClient, **body: object) -> dict:
    response = client.post("/api/v1/jobs", json={"type": "sleep", "params": {}, **body})
    assert response.status_code == 202, response.text
    return response.json()


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    return error


def test_submit_answers_202_with_the_job_and_its_location(client: TestClient) -> None:
    response = client.post(
        "/api/v1/jobs", json={"type": "sleep", "params": {"seconds": 0}, "priority": "high"}
    )
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/api/v1/jobs/{job['id']}"
    assert (job["state"], job["priority"], job["owner"]) == ("pending", 8, "local")
    assert job["cancel_requested_at"] is None


def test_same_idempotency_key_answers_200_with_the_first_job(client: TestClient) -> None:
    key = uuid.uuid4().hex
    first = submit(client, idempotency_key=key)
    again = client.post("/api/v1/jobs", json={"type": "sleep", "idempotency_key": key})
    assert again.status_code == 200
    assert again.json()["id"] == first["id"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{", 400, "invalid_request"),
        (b"\xff\xfe", 400, "invalid_request"),
        (b"[" * 65 + b"]" * 65, 400, "invalid_request"),
        (b'{"type": "sleep", "params": ' + b"[" * 70 + b"]" * 70 + b"}", 400, "invalid_request"),
        (b'{"type": "sleep", "params": "x"}', 422, "invalid_params"),
        (b'{"type": "nope"}', 422, "unknown_job_type"),
    ],
)
def test_bad_bodies_get_the_envelope(client: TestClient, body: bytes, status: int, code: str):
    response = client.post("/api/v1/jobs", content=body)
    assert_error(response, status, code)


def test_body_over_the_limit_is_413(client: TestClient) -> None:
    limit = client.app.state.settings.server.max_body_size
    big = b'{"type": "sleep", "params": {"echo": "' + b"x" * limit + b'"}}'
    assert_error(client.post("/api/v1/jobs", content=big), 413, "payload_too_large")


#: Routes that read the job store, as the OpenAPI document names them.
STORE_ROUTES = [
    ("get", "/api/v1/jobs"),
    ("post", "/api/v1/jobs"),
    ("get", "/api/v1/jobs/{job_id}"),
    ("delete", "/api/v1/jobs/{job_id}"),
    ("post", "/api/v1/jobs/{job_id}/retry"),
    ("get", "/api/v1/jobs/{job_id}/stream"),
    ("get", "/api/v1/stats"),
    ("get", "/api/v1/workers"),
]


def test_a_store_outage_is_503_service_unavailable_not_500(client: TestClient) -> None:
    job = submit(client)
    document = client.get("/openapi.json").json()
    with store_outage():
        for method, path in STORE_ROUTES:
            body = {"json": {"type": "sleep", "params": {}}} if path == "/api/v1/jobs" else {}
            response = client.request(method, path.format(job_id=job["id"]), **body)
            error = assert_error(response, 503, "service_unavailable")
            assert "store" in error["message"] and "127.0.0.1" not in error["message"]
            assert "503" in document["paths"][path][method]["responses"], (method, path)
    assert client.get(f"/api/v1/jobs/{job['id']}").status_code == 200


def test_routing_errors_use_the_envelope(client: TestClient) -> None:
    assert_error(client.get("/api/v1/nothing"), 404, "not_found")
    response = client.put("/api/v1/jobs")
    assert_error(response, 405, "method_not_allowed")
    assert "GET" in response.headers["allow"]


def test_show_has_position_in_queue_and_unknown_id_is_404(client: TestClient) -> None:
    job = submit(client)
    shown = client.get(f"/api/v1/jobs/{job['id']}").json()
    assert shown["id"] == job["id"]
    assert isinstance(shown["position_in_queue"], int)
    assert_error(client.get(f"/api/v1/jobs/{uuid.uuid4()}"), 404, "not_found")
    assert_error(client.get("/api/v1/jobs/not-a-uuid%00"), 404, "not_found")
    assert_error(client.get(f"/api/v1/jobs/{job['id'].upper()}"), 404, "not_found")


def test_list_is_newest_first_paginated_and_filtered(client: TestClient) -> None:
    marker = uuid.uuid4().hex
    ids = [submit(client, trace_id=f"{marker[:20]}-{i}")["id"] for i in range(5)]
    page = client.get("/api/v1/jobs", params={"limit": 3, "type": "sleep"}).json()
    assert page["limit"] == 3 and page["offset"] == 0
    assert [job["id"] for job in page["jobs"]] == ids[::-1][:3]
    total = page["total"]
    assert total >= 5
    second = client.get("/api/v1/jobs", params={"limit": 3, "offset": 3, "type": "sleep"}).json()
    assert [job["id"] for job in second["jobs"]][:2] == ids[::-1][3:5]
    assert second["total"] == total

    client.delete(f"/api/v1/jobs/{ids[0]}")
    cancelled = client.get("/api/v1/jobs", params={"state": "cancelled", "limit": 100}).json()
    assert ids[0] in [job["id"] for job in cancelled["jobs"]]
    assert {job["state"] for job in cancelled["jobs"]} == {"cancelled"}
    both = client.get("/api/v1/jobs?state=cancelled,pending&limit=100").json()
    assert both["total"] >= 5
    none = client.get("/api/v1/jobs", params={"type": "no-such-type"}).json()
    assert (none["jobs"], none["total"]) == ([], 0)


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=101",
        "limit=ten",
        "offset=-1",
        "offset=x",
        "offset=9223372036854775808",
        "state=done",
        "state=",
        "type=sleep,",
        "type=a%00b",
    ],
)
def test_bad_list_parameters_are_422(client: TestClient, query: str) -> None:
    error = assert_error(client.get(f"/api/v1/jobs?{query}"), 422, "invalid_params")
    assert error["details"][0]["path"] == query.split("=")[0]


def test_cancel_pending_at_once_running_by_request_terminal_409(client: TestClient) -> None:
    pending = submit(client)
    response = client.delete(f"/api/v1/jobs/{pending['id']}")
    assert response.status_code == 200
    assert response.json()["state"] == "cancelled"
    assert_error(client.delete(f"/api/v1/jobs/{pending['id']}"), 409, "conflict")

    running = submit(client)
    with connection():
        assert jobs.mark_running(running["id"], attempt=1, worker_id="test:1")
    response = client.delete(f"/api/v1/jobs/{running['id']}")
    assert response.status_code == 202
    job = response.json()
    assert job["state"] == "running" and job["cancel_requested_at"] is not None
    again = client.delete(f"/api/v1/jobs/{running['id']}").json()
    assert again["cancel_requested_at"] == job["cancel_requested_at"]

    assert_error(client.delete(f"/api/v1/jobs/{uuid.uuid4()}"), 404, "not_found")


def test_retry_reruns_failed_and_cancelled_only(client: TestClient) -> None:
    job = submit(client)
    assert_error(client.post(f"/api/v1/jobs/{job['id']}/retry"), 409, "conflict")
    client.delete(f"/api/v1/jobs/{job['id']}")
    response = client.post(f"/api/v1/jobs/{job['id']}/retry")
    assert response.status_code == 202
    assert response.json()["state"] == "pending"
    assert response.json()["completed_at"] is None

    failed = submit(client)
    with connection():
        assert jobs.mark_running(failed["id"], attempt=1, worker_id="test:1")
        assert jobs.mark_failed(failed["id"], attempt=1, error_type="E", error_message="boom")
    retried = client.post(f"/api/v1/jobs/{failed['id']}/retry").json()
    assert (retried["state"], retried["attempts"], retried["error"]) == ("pending", 0, None)
    assert_error(client.post(f"/api/v1/jobs/{uuid.uuid4()}/retry"), 404, "not_found")


def test_stats_count_by_state_type_and_queue(client: TestClient) -> None:
    before = client.get("/api/v1/stats").json()
    job = submit(client)
    client.delete(f"/api/v1/jobs/{submit(client)['id']}")
    after = client.get("/api/v1/stats").json()
    assert after["total"] == before["total"] + 2
    assert after["by_state"]["pending"] == before["by_state"]["pending"] + 1
    assert after["by_state"]["cancelled"] == before["by_state"]["cancelled"] + 1
    assert set(after["by_state"]) == {"pending", "running", "completed", "failed", "cancelled"}
    sleep_before = before["by_type"].get("sleep", {}).get("pending", 0)
    assert after["by_type"]["sleep"]["pending"] == sleep_before + 1
    assert after["by_queue"][job["queue"]]["cancelled"] >= 1


def test_probes_answer(client: TestClient) -> None:
    assert client.get("/live").json() == {"status": "ok"}
    assert client.get("/health").json()["status"] == "ok"
    ready = client.get("/ready").json()
    assert ready["status"] == "ok" and ready["store"]["ok"] and ready["broker"]["ok"]
    version = client.get("/version").json()
    assert version["version"] == "0.1.0"
    assert version["schema_version"] >= 4
    assert version["auth"] == "none"


def test_metrics_count_submissions_and_time_requests(client: TestClient) -> None:
    def submitted() -> float:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith('skillq_jobs_submitted_total{type="sleep"}'):
                return float(line.split()[-1])
        return 0.0

    before = submitted()
    job = submit(client)
    client.get(f"/api/v1/jobs/{job['id']}")
    text = client.get("/metrics").text
    assert submitted() == before + 1
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")
    assert 'skillq_http_request_duration_seconds_count{method="POST",route="/api/v1/jobs"' in text
    assert 'route="/api/v1/jobs/{job_id}"' in text
    assert 'skillq_jobs{queue="default",state="pending",type="sleep"}' in text


def test_whoami_is_the_local_admin(client: TestClient) -> None:
    me = client.get("/api/v1/auth/whoami").json()
    assert me == {
        "subject": "local",
        "roles": ["admin"],
        "method": "none",
        "admin": True,
        "can_submit": True,
    }
