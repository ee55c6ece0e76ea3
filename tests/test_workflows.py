"""Job dependencies and workflows in process: what is refused (422, nothing written), owner
rules, cancelling a workflow, and how held jobs are settled from the store alone.

No worker runs here: a job "ends" by writing its outcome to the store, as a worker would,
and the settling is driven the way a worker or a recovery pass drives it. The real
processes (a SIGKILLed worker mid-workflow, every broker) are in test_workflow_recovery.py.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from starlette.testclient import TestClient

from skillq import actors
from skillq.api.app import create_app
from skillq.jobs.coordinator import JobCoordinator
from skillq.jobs.recovery import recover_stale_jobs
from skillq.jobs.release import release_dependants
from skillq.jobs.workflows import Workflows, overall_state
from skillq.settings import AuthSettings, JwtSettings, StorageSettings
from skillq.storage import jobs
from skillq.storage.database import connection
from skillq.storage.models import Job, utcnow
from tests.support import LOCAL_URL, child_env, write_settings

SECRET = "workflow-test-secret-" + "w" * 32


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings = dataclasses.replace(
        actors.settings, jobs=dataclasses.replace(actors.settings.jobs, max_workflow_jobs=4)
    )
    with TestClient(create_app(settings), base_url=LOCAL_URL) as client:
        yield client


def total_jobs(client: TestClient) -> int:
    return client.get("/api/v1/jobs?limit=1").json()["total"]


def refused(client: TestClient, path: str, body: Any) -> dict:
    before = total_jobs(client)
    response = client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert total_jobs(client) == before, "a refused workflow wrote jobs"
    return response.json()["error"]


def sleep(**node: Any) -> dict:
    return {"type": "sleep", "params": {"seconds": 0}, **node}


@pytest.mark.parametrize(
    ("jobs", "path", "says"),
    [
        (
            {
                "a": sleep(depends_on=["c"]),
                "b": sleep(depends_on=["a"]),
                "c": sleep(depends_on=["b"]),
            },
            "body.jobs.a.depends_on",
            "cycle: a -> c -> b -> a",
        ),
        ({"a": sleep(depends_on=["a"])}, "body.jobs.a.depends_on", "cycle: a -> a"),
        ({"a": sleep(), "b": sleep(depends_on=["x"])}, "body.jobs.b.depends_on.0", '"x"'),
        ({f"j{i}": sleep() for i in range(5)}, "body.jobs", "at most 4"),
        (
            {"a": sleep(), "b": sleep(params={"echo": {"$result": "c"}}, depends_on=["a"])},
            "body.jobs.b.params.echo",
            'names "c"',
        ),
        ({"a": sleep(params={"seconds": "x"})}, "body.jobs.a.params.seconds", '"x"'),
        ({"a": {"type": "nope"}}, "body.jobs.a.type", "known job types"),
        ({"a b": sleep()}, "body.jobs", "pattern"),
    ],
    ids=[
        "cycle",
        "self",
        "unknown-name",
        "too-many",
        "result-not-a-dependency",
        "params",
        "type",
        "name",
    ],
)
def test_a_bad_workflow_is_422_with_the_path_and_writes_nothing(
    client: TestClient, jobs: dict, path: str, says: str
) -> None:
    error = refused(client, "/api/v1/workflows", {"jobs": jobs})
    assert any(d["path"] == path and says in d["message"] for d in error["details"]), error


def test_depends_on_unknown_ids_is_422_and_a_held_job_shows_what_it_waits_for(
    client: TestClient,
) -> None:
    missing = "0c1a7f5e-9b4b-4a43-9d3c-1c7e3f0b2a11"
    error = refused(client, "/api/v1/jobs", sleep(depends_on=["nope", missing]))
    assert [d["path"] for d in error["details"]] == ["body.depends_on.0", "body.depends_on.1"]
    first = client.post("/api/v1/jobs", json=sleep()).json()
    error = refused(client, "/api/v1/jobs", sleep(depends_on=[first["id"], first["id"]]))
    assert error["details"][0]["path"] == "body.depends_on.1"
    held = client.post(
        "/api/v1/jobs",
        json=sleep(depends_on=[{"job": first["id"], "on_failure": "run"}]),
    ).json()
    shown = client.get(f"/api/v1/jobs/{held['id']}").json()
    assert (shown["state"], shown["waiting_for"], shown["position_in_queue"]) == (
        "pending",
        [first["id"]],
        None,
    )
    assert shown["depends_on"] == [{"job": first["id"], "on_failure": "run", "name": None}]
    listed = client.get("/api/v1/jobs?state=pending&limit=100").json()["jobs"]
    assert next(j for j in listed if j["id"] == held["id"])["waiting_for"] == [first["id"]]
    assert client.get(f"/api/v1/jobs/{first['id']}").json()["waiting_for"] == []


def test_cancelling_a_workflow_cancels_its_jobs_and_what_waits_for_them(
    client: TestClient,
) -> None:
    created = client.post(
        "/api/v1/workflows",
        json={"jobs": {"a": sleep(), "b": sleep(depends_on=["a"]), "c": sleep(depends_on=["b"])}},
    )
    assert created.status_code == 202, created.text
    workflow = created.json()
    assert created.headers["location"] == f"/api/v1/workflows/{workflow['id']}"
    assert workflow["state"] == "pending" and workflow["counts"]["pending"] == 3
    outside = client.post("/api/v1/jobs", json=sleep(depends_on=[workflow["jobs"]["c"]["id"]]))
    cancelled = client.post(f"/api/v1/workflows/{workflow['id']}/cancel")
    assert cancelled.status_code == 200
    status = cancelled.json()
    assert (status["state"], status["counts"]["cancelled"]) == ("cancelled", 3)
    after = client.get(f"/api/v1/jobs/{outside.json()['id']}").json()
    assert after["state"] == "cancelled" and after["error"]["type"] == "DependencyCancelled"
    assert f"dependency {workflow['jobs']['c']['id']} was cancelled" in after["error"]["message"]
    assert client.get(f"/api/v1/workflows/{workflow['id']}").json() == status
    assert client.post(f"/api/v1/workflows/{workflow['id']}/cancel").json() == status
    assert client.get("/api/v1/workflows/not-a-uuid").status_code == 404


def bearer(subject: str, *roles: str) -> dict[str, str]:
    claims = {"sub": subject, "roles": list(roles), "iss": "skillq", "aud": "skillq-api"}
    claims["exp"] = int(time.time()) + 600
    return {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}


def test_another_owner_gets_404_and_cannot_depend_on_what_is_not_theirs() -> None:
    auth = AuthSettings(mode="jwt", jwt=JwtSettings(secret=SECRET))
    app = create_app(dataclasses.replace(actors.settings, auth=auth))
    alice, bob = bearer("alice", "submitter"), bearer("bob", "submitter")
    with TestClient(app, base_url=LOCAL_URL) as client:
        workflow = client.post(
            "/api/v1/workflows", json={"jobs": {"a": sleep()}}, headers=alice
        ).json()
        path = f"/api/v1/workflows/{workflow['id']}"
        assert client.get(path, headers=alice).status_code == 200
        for response in (client.get(path, headers=bob), client.post(f"{path}/cancel", headers=bob)):
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "not_found"
        theirs = workflow["jobs"]["a"]["id"]
        response = client.post("/api/v1/jobs", json=sleep(depends_on=[theirs]), headers=bob)
        assert response.status_code == 422
        assert response.json()["error"]["details"][0]["message"] == f'no job with id "{theirs}"'
        assert client.get(path, headers=alice).json()["counts"]["cancelled"] == 0
        admin = bearer("root", "admin")
        assert client.get(path, headers=admin).json()["owner"] == "alice"


# --- settling from the store (on SQLite and PostgreSQL) ---


def end(job_id: str, state: str, result: Any = None) -> None:
    """Record an outcome as a worker would, and die before settling the dependants."""
    with connection():
        Job.update(state=state, result=result, completed_at=utcnow()).where(
            Job.id == job_id
        ).execute()


def read(job_id: str) -> Job:
    with connection():
        return jobs.get_job(job_id)


def test_recovery_settles_what_a_dead_worker_left_and_fills_in_results(
    store: StorageSettings,
) -> None:
    coordinator = JobCoordinator(actors.broker, actors.settings)
    status = Workflows(coordinator).create(
        {
            "jobs": {
                "a": sleep(params={"echo": {"items": [{"n": 0.25}]}}),
                "f": sleep(params={"fail": True}),
                "b": sleep(
                    params={
                        "seconds": {"$result": "a", "path": "echo.items.0.n"},
                        "echo": {"$result": "a"},
                    },
                    depends_on=["a"],
                ),
                "c": sleep(depends_on=["f"]),
                "d": sleep(depends_on=["c"]),
                "e": sleep(
                    params={"echo": {"$result": "f"}},
                    depends_on=[{"job": "f", "on_failure": "run"}],
                ),
                "g": sleep(params={"seconds": {"$result": "a", "path": "echo"}}, depends_on=["a"]),
                "h": sleep(params={"echo": {"$result": "a", "path": ["no", 1]}}, depends_on=["a"]),
            }
        },
        owner="local",
    )
    ids = {name: job["id"] for name, job in status.jobs.items()}
    assert not read(ids["a"]).waiting and read(ids["b"]).waiting
    a_result = {"echo": {"items": [{"n": 0.25}]}, "steps": 10}
    end(ids["a"], "completed", a_result)
    end(ids["f"], "failed")
    # The workers recorded both outcomes and died before settling anything.
    assert read(ids["b"]).waiting and read(ids["c"]).state == "pending"

    recovery = recover_stale_jobs(actors.settings, actors.broker)

    assert recovery.settled == 6
    b = read(ids["b"])
    assert (b.state, b.waiting, b.enqueued_at is not None) == ("pending", False, True)
    assert b.params == {"seconds": 0.25, "echo": a_result}
    c, d = read(ids["c"]), read(ids["d"])
    assert (c.state, c.error_type) == ("cancelled", "DependencyFailed")
    assert c.error_message.startswith(f"dependency f ({ids['f']}) failed")
    assert (d.state, d.error_type) == ("cancelled", "DependencyCancelled")
    assert (read(ids["e"]).state, read(ids["e"]).params["echo"]) == ("pending", None)
    g, h = read(ids["g"]), read(ids["h"])
    assert (g.state, g.error_type) == ("failed", "InvalidParams")
    assert "params.seconds" in g.error_message and "schema of" in g.error_message
    assert (h.state, h.error_type) == ("failed", "InvalidParams")
    assert 'the result of a has no "no.1"' in h.error_message
    assert recover_stale_jobs(actors.settings, actors.broker).settled == 0
    with connection():
        assert Workflows(coordinator).get(status.id).counts == {
            "pending": 2,
            "running": 0,
            "completed": 1,
            "failed": 3,
            "cancelled": 2,
        }


def test_a_dependant_is_settled_once_by_concurrent_settlers_and_retried_it_waits_again(
    store: StorageSettings,
) -> None:
    coordinator = JobCoordinator(actors.broker, actors.settings)
    first = coordinator.submit_job(sleep(), owner="local").job
    then = coordinator.submit_job(sleep(depends_on=[first.id]), owner="local").job
    end(first.id, "cancelled")
    with connection():
        assert release_dependants(first.id, coordinator) == 1
        assert release_dependants(first.id, coordinator) == 0  # a second settler finds none
    assert read(then.id).state == "cancelled"
    # Retried, it follows its dependency again: cancelled at once while that stays cancelled,
    # waiting while it runs again, released once it completes.
    assert coordinator.retry_job(then.id).error_type == "DependencyCancelled"
    end(first.id, "running")
    assert coordinator.retry_job(then.id).waiting
    assert coordinator.get_job(then.id).waiting_for == [first.id]
    end(first.id, "completed", {"ok": True})
    with connection():
        assert release_dependants(first.id, coordinator) == 1
    assert (read(then.id).state, read(then.id).waiting) == ("pending", False)
    # A dependency that completed before the submission releases the job at once.
    at_once = coordinator.submit_job(sleep(depends_on=[first.id]), owner="local").job
    assert (at_once.state, at_once.waiting) == ("pending", False)


def test_overall_state() -> None:
    counts = dict.fromkeys(["pending", "running", "completed", "failed", "cancelled"], 0)
    assert overall_state({**counts, "pending": 2}) == "pending"
    assert overall_state({**counts, "pending": 1, "completed": 1}) == "running"
    assert overall_state({**counts, "completed": 2}) == "completed"
    assert overall_state({**counts, "completed": 1, "failed": 1, "cancelled": 1}) == "failed"
    assert overall_state({**counts, "completed": 1, "cancelled": 1}) == "cancelled"


def test_the_cli_submits_with_depends_on(tmp_path: Path) -> None:
    settings = write_settings(tmp_path, {"server": {"data_dir": str(tmp_path / "data")}})

    def skillq(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "skillq", "jobs", "submit", "sleep", *args]
        env = child_env(settings)
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    first = skillq().stdout.strip()
    held = skillq("--depends-on", first, "--json")
    assert held.returncode == 0, held.stderr
    job = json.loads(held.stdout)
    assert (job["state"], job["waiting_for"]) == ("pending", [first])
