"""`GET /openapi.json` describes every REST route, and the app keeps to it: schemathesis
generates requests from the document (valid and invalid) and runs every check on every
response, in process in auth mode `none` and in `jwt` mode with an admin token, and over
HTTP against a real API process on PostgreSQL. The schemathesis command itself runs in
tests/test_openapi_command.py (a file of its own, so the two run side by side).

`SKILLQ_FUZZ_EXAMPLES` (default 25) sets the examples per operation; raise it for a longer
run by hand, e.g. `SKILLQ_FUZZ_EXAMPLES=500 pytest tests/test_openapi.py -k command`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode
from starlette.testclient import TestClient

from skillq import actors
from skillq.api.app import create_app
from skillq.api.openapi import documented_routes
from skillq.settings import AuthSettings, JwtSettings
from tests.openapi_hooks import FUZZED_BATCH_JOBS, keep_run_at_in_window
from tests.support import (
    LOCAL_URL,
    create_postgres_schema,
    drop_postgres_schema,
    postgres_schema_url,
    require_service,
    start_api,
    write_settings,
)

SECRET = "openapi-test-secret-" + "q" * 32
#: Per-operation check settings (why: in the file), for the in-process runs and the command.
CONFIG_FILE = Path(__file__).with_name("schemathesis.toml")
MAX_EXAMPLES = int(os.environ.get("SKILLQ_FUZZ_EXAMPLES", "25"))
#: An event stream of a pending job never ends, so it is tested in test_stream.py.
STREAM = r"/stream$"


def jwt_app(settings=None):
    auth = AuthSettings(mode="jwt", jwt=JwtSettings(secret=SECRET))
    return create_app(dataclasses.replace(settings or actors.settings, auth=auth))


def answering_testserver():
    """schemathesis calls an ASGI app with `Host: testserver`, which a loopback-bound app
    refuses (400); name it, as a deployment names its own host. Batches of
    FUZZED_BATCH_JOBS (see tests/openapi_hooks.py)."""
    server = dataclasses.replace(actors.settings.server, allowed_hosts=("testserver",))
    jobs = dataclasses.replace(actors.settings.jobs, max_batch_jobs=FUZZED_BATCH_JOBS)
    return dataclasses.replace(actors.settings, server=server, jobs=jobs)


def admin_token() -> str:
    now = int(time.time())
    claims = {"sub": "fuzz", "roles": ["admin"], "iss": "skillq", "aud": "skillq-api"}
    return jwt.encode({**claims, "iat": now, "exp": now + 3600}, SECRET, algorithm="HS256")


@pytest.mark.parametrize("make_app", [create_app, jwt_app], ids=["auth-none", "auth-jwt"])
def test_every_rest_route_is_documented(make_app) -> None:
    app = make_app()
    with TestClient(app, base_url=LOCAL_URL) as client:
        document = client.get("/openapi.json").json()
    assert document["openapi"] == "3.1.0"
    served = documented_routes(app.routes, app.state.settings.mcp.endpoint)
    documented = [
        (path, method) for path, methods in document["paths"].items() for method in methods
    ]
    assert sorted(served) == sorted(documented)
    for path, method in documented:
        operation = document["paths"][path][method]
        for status, response in operation["responses"].items():
            assert response["description"], (path, method, status)
    submission = document["paths"]["/api/v1/jobs"]["post"]["requestBody"]
    variants = submission["content"]["application/json"]["schema"]["oneOf"]
    assert {v["properties"]["type"]["const"] for v in variants} == set(
        app.state.coordinator.job_types
    )
    if app.state.settings.auth.mode == "jwt":
        assert document["components"]["securitySchemes"]["apiKey"]["name"] == "X-API-Key"
        assert document["paths"]["/live"]["get"]["security"] == []
        assert "401" in document["paths"]["/api/v1/jobs"]["get"]["responses"]


FUZZ = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)


@pytest.fixture(scope="module")
def postgres_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real API process on PostgreSQL, which refuses some strings SQLite takes (NUL)."""
    require_service("postgres")
    directory = tmp_path_factory.mktemp("openapi-postgres")
    schema = create_postgres_schema()
    settings = write_settings(
        directory,
        {
            "server": {"data_dir": str(directory / "data")},
            "storage": {"backend": "postgres", "url": postgres_schema_url(schema)},
            "jobs": {"max_batch_jobs": FUZZED_BATCH_JOBS},
        },
    )
    process, url = start_api(settings, directory)
    try:
        yield url
    finally:
        process.stop()
        drop_postgres_schema(schema)


def every_check() -> list:
    load_all_checks()
    return CHECKS.get_all()


def operations(target) -> list:
    config = SchemathesisConfig.from_path(CONFIG_FILE)
    if isinstance(target, str):
        schema = schemathesis.openapi.from_url(f"{target}/openapi.json", config=config)
    else:
        schema = schemathesis.openapi.from_asgi("/openapi.json", target, config=config)
    schema = schema.exclude(path_regex=STREAM)
    return [result.ok() for result in schema.get_all_operations()]


def fuzz(operation, mode: GenerationMode, headers: dict | None):
    @given(case=operation.as_strategy(generation_mode=mode))
    @FUZZ
    def check(case) -> None:
        keep_run_at_in_window(case)
        response = case.call_and_validate(headers=headers, checks=every_check())
        assert response.status_code < 500

    return check


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda mode: mode.value)
@pytest.mark.parametrize("target", ["auth-none", "auth-jwt", "postgres-process"])
@pytest.mark.timeout(600)  # CPU-bound: at 25 examples, minutes on a busy 2-core machine
def test_the_api_keeps_to_its_document(request, target: str, mode: GenerationMode) -> None:
    """Valid and invalid requests per operation; every response must match the document
    (status, content type, headers, body schema) and none may be a 5xx."""
    if target == "postgres-process":
        app = request.getfixturevalue("postgres_api")
    else:
        named = answering_testserver()
        app = jwt_app(named) if target == "auth-jwt" else create_app(named)
    headers = {"Authorization": f"Bearer {admin_token()}"} if target == "auth-jwt" else None
    checked = []
    for operation in operations(app):
        try:
            fuzz(operation, mode, headers)()
        except Unsatisfiable:
            # Nothing to get wrong (no parameters, no body): no invalid request exists.
            assert mode is GenerationMode.NEGATIVE and not operation.body
            continue
        checked.append(operation.label)
    assert len(checked) >= (10 if mode is GenerationMode.POSITIVE else 3)


def test_cancel_is_a_post_and_delete_its_documented_alias() -> None:
    with TestClient(create_app(), base_url=LOCAL_URL) as client:
        document = client.get("/openapi.json").json()
        delete = document["paths"]["/api/v1/jobs/{job_id}"]["delete"]
        cancel = document["paths"]["/api/v1/jobs/{job_id}/cancel"]["post"]
        assert delete["deprecated"] is True and "does not delete" in delete["description"]
        assert delete["responses"].keys() == cancel["responses"].keys()
        assert "409" in document["paths"]["/api/v1/jobs"]["post"]["responses"]
        for method in ("post", "delete"):
            job = client.post("/api/v1/jobs", json={"type": "sleep"}).json()
            url = f"/api/v1/jobs/{job['id']}" + ("/cancel" if method == "post" else "")
            response = client.request(method.upper(), url)
            assert (response.status_code, response.json()["state"]) == (200, "cancelled")
            assert client.get(f"/api/v1/jobs/{job['id']}").json()["state"] == "cancelled"
            assert client.request(method.upper(), url).status_code == 409
