"""Webhooks: signed deliveries of job outcomes to real local receivers through a real API and
worker, retries while a receiver is down, the SSRF guard, and owner rules on deliveries.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from starlette.testclient import TestClient
from typer.testing import CliRunner

from skillq import actors
from skillq.api.app import create_app
from skillq.cli.main import app as cli_app
from skillq.errors import SettingsError
from skillq.jobs.coordinator import JobCoordinator
from skillq.settings import WebhookSettings, load_settings
from skillq.storage import jobs
from skillq.storage import webhooks as stored
from skillq.storage.database import connection
from skillq.webhooks import delivery, events
from tests.support import (
    LOCAL_URL,
    REDIS_URL,
    create_postgres_schema,
    drop_postgres_schema,
    free_port,
    postgres_schema_url,
    require_service,
    start_api,
    start_worker,
    toml_value,
    wait_for,
)
from tests.test_hostile_values import mcp_call

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8GKYo="
SUB_SECRET = "whsec_" + "c3Vic2NyaXB0aW9uLXNlY3JldC1mb3ItdGVzdHMhIQ=="
JWT_SECRET = "webhook-test-secret-" + "x" * 32


class Receiver:
    """A local webhook receiver: records every request; answers `fail_first` 500s first."""

    def __init__(self, port: int = 0, fail_first: int = 0) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                receiver.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body}
                )
                failing = receiver.fail_first > 0
                receiver.fail_first -= 1
                self.send_response(500 if failing else 204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, path: str) -> list[dict[str, Any]]:
        return [json.loads(r["body"]) for r in self.requests if r["path"] == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def bearer(subject: str, *roles: str) -> dict[str, str]:
    claims = {
        "sub": subject,
        "roles": list(roles or ["submitter"]),
        "iss": "skillq",
        "aud": "skillq-api",
        "exp": int(time.time()) + 3600,
    }
    return {"Authorization": f"Bearer {jwt.encode(claims, JWT_SECRET, algorithm='HS256')}"}


ALICE = bearer("alice")


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


@contextlib.contextmanager
def live_system(
    directory: Path, receiver: Receiver, stores: dict[str, dict[str, Any]]
) -> Iterator[str]:
    """A real API and one worker (every queue, the `webhooks` one included)."""
    sections = {
        "server": {"data_dir": str(directory / "data")},
        "broker": {"path": str(directory / "broker.db")},
        "storage": {"path": str(directory / "jobs.db")},
        **stores,
        "auth": {"mode": "jwt"},
        "auth.jwt": {"secret": JWT_SECRET},
        "workers": {"max_retries": 0, "job_timeout_secs": 20},
        "webhooks": {
            "allow_private": True,
            "secret": SECRET,
            "first_retry_secs": 0.2,
            "max_retry_secs": 0.5,
            "max_attempts": 100,
            "timeout_secs": 2,
            "progress_interval_secs": 0,
        },
    }
    text = "".join(
        f"[{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())
        for name, values in sections.items()
    )
    text += (
        "[[webhooks.subscriptions]]\n"
        f'url = "{receiver.url}/subscription"\n'
        f'secret = "{SUB_SECRET}"\n'
        'events = ["job.completed", "job.progress"]\n'
    )
    settings_path = directory / "settings.toml"
    settings_path.write_text(text)
    api, base_url = start_api(settings_path, directory)
    try:
        worker = start_worker(settings_path, directory)
        try:
            yield base_url
        finally:
            worker.stop()
    finally:
        api.stop()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[str]:
    """On the embedded SQLite broker and store."""
    with live_system(tmp_path_factory.mktemp("webhooks"), receiver, {}) as base_url:
        yield base_url


def submit(base_url: str, headers: dict[str, str] = ALICE, **body: Any) -> dict[str, Any]:
    response = httpx.post(f"{base_url}/api/v1/jobs", json=body, headers=headers, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()


def deliveries(base_url: str, job_id: str, headers: dict[str, str] = ALICE) -> list[dict]:
    response = httpx.get(f"{base_url}/api/v1/jobs/{job_id}/deliveries", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["deliveries"]


def delivered(base_url: str, job_id: str, headers: dict[str, str] = ALICE) -> list[dict]:
    found = deliveries(base_url, job_id, headers)
    return found if found and all(d["state"] == "delivered" for d in found) else []


def test_outcomes_are_delivered_signed_to_callbacks_and_subscriptions(
    live: str, receiver: Receiver
) -> None:
    path = f"/cb-{uuid.uuid4().hex[:8]}"
    callback = receiver.url + path
    done = submit(live, type="sleep", params={"seconds": 0, "steps": 2}, callback_url=callback)
    failed = submit(live, type="sleep", params={"seconds": 0, "fail": True}, callback_url=callback)
    running = submit(
        live, type="sleep", params={"seconds": 60, "steps": 600}, callback_url=callback
    )
    wait_for(
        lambda: (
            httpx.get(f"{live}/api/v1/jobs/{running['id']}", headers=ALICE).json()["state"]
            == "running"
        ),
        what="the long job to run",
    )
    assert httpx.delete(f"{live}/api/v1/jobs/{running['id']}", headers=ALICE).status_code == 202

    wait_for(lambda: len(receiver.events(path)) >= 3, timeout=60, what="three callbacks")
    by_job = {event["data"]["id"]: event for event in receiver.events(path)}
    assert by_job[done["id"]]["type"] == "job.completed"
    assert by_job[done["id"]]["data"]["result"]["steps"] == 2
    assert by_job[failed["id"]]["type"] == "job.failed"
    assert by_job[failed["id"]]["data"]["error"]["type"] == "RuntimeError"
    assert by_job[running["id"]]["type"] == "job.cancelled"
    # Each verified by the Standard Webhooks library itself; another secret fails it.
    for request in [r for r in receiver.requests if r["path"] == path]:
        assert Webhook(SECRET).verify(request["body"], request["headers"])["data"]["id"]
        assert request["headers"]["webhook-id"].startswith("msg_")
        with pytest.raises(WebhookVerificationError):
            Webhook(SUB_SECRET).verify(request["body"], request["headers"])

    # The subscription got the completed job's outcome and its progress, with its own secret.
    def subscription_events() -> set[str]:
        found = [
            Webhook(SUB_SECRET).verify(r["body"], r["headers"])
            for r in receiver.requests
            if r["path"] == "/subscription"
        ]
        return {e["type"] for e in found if e["data"]["id"] == done["id"]}

    wait_for(lambda: subscription_events() == {"job.completed", "job.progress"}, timeout=60)
    # Watching progress for webhooks keeps the last report the throttle held back.
    shown = httpx.get(f"{live}/api/v1/jobs/{done['id']}", headers=ALICE).json()
    assert shown["message"] == "slept 2 of 2 steps", shown

    listed = wait_for(lambda: delivered(live, done["id"]), what="the delivery recorded")
    assert [(d["event"], d["source"], d["url"], d["attempts"]) for d in listed] == [
        ("job.completed", "callback", callback, 1)
    ], "the owner sees her callback only, not the operator's subscription"
    assert listed[0]["attempt_log"][0]["status_code"] == 204
    admin = bearer("root", "admin")
    wait_for(lambda: len(delivered(live, done["id"], admin)) >= 3, what="admin's view")
    assert {d["source"] for d in deliveries(live, done["id"], admin)} == {
        "callback",
        "subscription",
    }


def test_a_receiver_down_then_failing_then_up_gets_the_event(live: str) -> None:
    port = free_port()  # nobody listens yet: connections are refused
    callback = f"http://127.0.0.1:{port}/hook"
    job = submit(live, type="sleep", params={"seconds": 0, "steps": 1}, callback_url=callback)

    def refused_attempts() -> int:
        found = deliveries(live, job["id"])
        return found[0]["attempts"] >= 2 if found else False

    wait_for(refused_attempts, timeout=60, what="attempts against a closed port")
    late = Receiver(port=port, fail_first=1)
    try:
        wait_for(lambda: delivered(live, job["id"]), timeout=60, what="the retried delivery")
        log = deliveries(live, job["id"])[0]["attempt_log"]
        assert "cannot connect" in log[0]["error"] and log[0]["status_code"] is None
        assert [a["status_code"] for a in log[-2:]] == [500, 204]
        assert [a["attempt"] for a in log] == list(range(1, len(log) + 1))
        # The same message every time: one webhook-id, one body, each attempt signed afresh.
        assert len({r["headers"]["webhook-id"] for r in late.requests}) == 1
        assert len({r["body"] for r in late.requests}) == 1
        assert json.loads(late.requests[-1]["body"])["type"] == "job.completed"
    finally:
        late.close()


def test_another_owner_cannot_read_deliveries(live: str, receiver: Receiver) -> None:
    job = submit(live, type="sleep", params={"seconds": 0}, callback_url=receiver.url + "/o")
    url = f"{live}/api/v1/jobs/{job['id']}/deliveries"
    response = httpx.get(url, headers=bearer(f"bob-{uuid.uuid4().hex[:6]}", "viewer"))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert httpx.get(url, headers=ALICE).status_code == 200


def test_on_redis_and_postgresql_the_outcome_is_delivered(
    tmp_path: Path, receiver: Receiver
) -> None:
    require_service("redis")
    require_service("postgres")
    schema = create_postgres_schema()
    stores = {
        "broker": {"backend": "redis", "url": REDIS_URL, "namespace": f"w{uuid.uuid4().hex[:8]}"},
        "storage": {"backend": "postgres", "url": postgres_schema_url(schema)},
    }
    try:
        with live_system(tmp_path, receiver, stores) as base_url:
            path = f"/pg-{uuid.uuid4().hex[:8]}"
            job = submit(
                base_url, type="sleep", params={"seconds": 0}, callback_url=receiver.url + path
            )
            wait_for(lambda: delivered(base_url, job["id"]), timeout=60, what="the delivery")
            (request,) = [r for r in receiver.requests if r["path"] == path]
            event = Webhook(SECRET).verify(request["body"], request["headers"])
            assert (event["type"], event["data"]["id"]) == ("job.completed", job["id"])
    finally:
        drop_postgres_schema(schema)


PRIVATE_URLS = [
    "http://127.0.0.1:9/hook",
    "http://10.1.2.3/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]:8080/",
    "http://[::ffff:127.0.0.1]/",
    "http://localhost:9/",
]


@pytest.fixture(scope="module")
def guarded() -> Iterator[TestClient]:
    """In process, the default guard (no `allow_private`), with a secret for callbacks."""
    settings = dataclasses.replace(actors.settings, webhooks=WebhookSettings(secret=SECRET))
    with TestClient(create_app(settings), base_url=LOCAL_URL) as client:
        yield client


@pytest.mark.parametrize(
    "url, problem",
    [
        *[(url, "is refused") for url in PRIVATE_URLS],
        ("ftp://example.com/x", "scheme must be http or https"),
        ("file:///etc/passwd", "scheme must be http or https"),
        ("http://user:pw@example.com/", "user name or password"),
        ("http:///nohost", "has no host"),
    ],
)
def test_submit_refuses_a_callback_the_guard_refuses(
    guarded: TestClient, url: str, problem: str
) -> None:
    before = guarded.get("/api/v1/jobs").json()["total"]
    response = guarded.post("/api/v1/jobs", json={"type": "sleep", "callback_url": url})
    assert response.status_code == 422, response.text
    (detail,) = response.json()["error"]["details"]
    assert detail["path"] == "body.callback_url" and problem in detail["message"]
    assert guarded.get("/api/v1/jobs").json()["total"] == before, "nothing was written"


def test_mcp_job_options_and_the_cli_carry_callback_url(guarded: TestClient) -> None:
    options = {
        "skillq/job_options": {"callback_url": "http://169.254.169.254/latest/"},
        "skillq/inline_wait_secs": 0,
    }
    refused = mcp_call(guarded, "sleep", '{"seconds": 0}', **options)
    assert refused["isError"] is True, refused
    assert refused["structuredContent"]["error"]["details"][0]["path"] == "body.callback_url"
    # The CLI on the session's settings, which have no [webhooks] secret.
    args = ["jobs", "submit", "sleep", "--callback-url", "https://example.com/hook"]
    result = CliRunner().invoke(cli_app, args)
    assert result.exit_code != 0 and "[webhooks] secret" in result.output, result.output


def test_without_a_secret_callbacks_are_refused_and_the_pool_is_off() -> None:
    from skillq.jobs.pools import configured_threads

    with TestClient(create_app(actors.settings), base_url=LOCAL_URL) as client:
        body = {"type": "sleep", "callback_url": "https://example.com/hook"}
        response = client.post("/api/v1/jobs", json=body)
    assert response.status_code == 422
    assert "[webhooks] secret" in response.json()["error"]["message"]
    assert configured_threads(actors.settings, "webhooks") == 0


@pytest.mark.parametrize("url", PRIVATE_URLS)
def test_delivery_rechecks_the_address_and_sends_nothing(url: str) -> None:
    receiver = Receiver()
    try:
        target = url if "127.0.0.1:9" not in url else receiver.url + "/x"
        answer = delivery.post(WebhookSettings(), target, "msg_1", "{}", SECRET)
        assert answer.final and "refused" in answer.error and answer.status_code is None
        assert receiver.requests == []
    finally:
        receiver.close()


def test_an_outcome_gives_events_once_and_a_lost_attempt_is_made_again() -> None:
    """The store side of crashes: an outcome nobody announced is found and recorded once; an
    attempt claimed by a worker that died (never finished) is found by the sweep once its
    lease is over, marked interrupted by the next attempt, and the event is delivered."""
    receiver = Receiver()
    settings = dataclasses.replace(
        actors.settings, webhooks=WebhookSettings(allow_private=True, secret=SECRET)
    )
    try:
        coordinator = JobCoordinator(actors.broker, settings)
        request = {"type": "sleep", "callback_url": receiver.url + "/late"}
        job = coordinator.submit_job(request).job
        with connection():
            assert jobs.cancel_pending(job.id)  # ended where nothing announces it
            assert job.id in stored.unnotified_jobs()
        assert events.notify_outcome(actors.broker, settings, job.id) == 1
        assert events.notify_outcome(actors.broker, settings, job.id) == 0, "once only"
        with connection():
            assert job.id not in stored.unnotified_jobs()
            (row,) = stored.for_job(job.id)
            assert stored.claim_attempt(row, 1, lease_secs=-1)  # ...and the worker died
            assert stored.claim_overdue(timedelta(0)) == [(row.id, 2)]
        assert delivery.deliver(actors.broker, settings, row.id, 1) == "stale"
        assert delivery.deliver(actors.broker, settings, row.id, 2) == "delivered"
        assert delivery.deliver(actors.broker, settings, row.id, 3) == "done"
        with connection():
            (row,) = stored.for_job(job.id)
        log = [(a.attempt, a.status_code, a.error) for a in row.attempt_list]
        assert log[0][0:2] == (1, None) and log[0][2].startswith("interrupted")
        assert log[1] == (2, 204, None)
        assert len(receiver.requests) == 1
        assert Webhook(SECRET).verify(receiver.requests[0]["body"], receiver.requests[0]["headers"])
    finally:
        receiver.close()


def test_settings_refuse_bad_secrets_events_and_urls(tmp_path: Path) -> None:
    subscription = f'[[webhooks.subscriptions]]\nsecret = "{SECRET}"\n'
    cases = {
        'secret = "nope"': "webhooks.secret: must start with 'whsec_'",
        'secret = "whsec_***"': "webhooks.secret: must be whsec_ followed by base64",
        'secret = "whsec_c2hvcnQ="': "webhooks.secret: must hold at least 24 bytes",
        subscription + 'url = "http://x"\nevents = ["job.x"]': (
            "webhooks.subscriptions[0].events[0]: must be one of"
        ),
        subscription + 'url = "ftp://x"': (
            "webhooks.subscriptions[0].url: must start with http:// or https://"
        ),
    }
    for text, message in cases.items():
        path = tmp_path / "settings.toml"
        path.write_text(f"[webhooks]\n{text}\n")
        with pytest.raises(SettingsError, match=re.escape(message)):
            load_settings(path)
