"""`skillq auth` as real processes against a real API process in `jwt` mode: keys are shown
once, stored as digests, listed without secrets, and refused once revoked; minted tokens
are accepted with their subject, roles and lifetime.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import pytest

from tests.support import ROOT, child_env, start_api, write_settings

SECRET = "cli-test-secret-" + "z" * 32


@dataclass
class Deployment:
    settings: Path
    url: str

    def skillq(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "skillq", "--settings", str(self.settings), *args],
            cwd=ROOT,
            env=child_env(self.settings),
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    directory = tmp_path_factory.mktemp("auth-cli")
    settings = write_settings(
        directory,
        {
            "server": {"data_dir": str(directory / "data")},
            "auth": {"mode": "jwt", "api_key_cache_secs": 0},
            "auth.jwt": {"secret": SECRET},
        },
    )
    api, url = start_api(settings, directory)
    try:
        yield Deployment(settings, url)
    finally:
        api.stop()


def whoami(deployment: Deployment, headers: dict[str, str]) -> httpx.Response:
    return httpx.get(f"{deployment.url}/api/v1/auth/whoami", headers=headers)


def test_api_key_lifecycle(deployment: Deployment) -> None:
    created = deployment.skillq("auth", "api-key", "create", "ci-bot", "--role", "submitter")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("skq_") and len(key) > 40

    me = whoami(deployment, {"X-API-Key": key})
    assert me.status_code == 200
    assert me.json()["subject"] == "ci-bot" and me.json()["roles"] == ["submitter"]

    listed = deployment.skillq("auth", "api-key", "list")
    assert "ci-bot\tsubmitter" in listed.stdout and key not in listed.stdout
    store = (deployment.settings.parent / "data" / "jobs.db").read_bytes()
    assert key.encode() not in store

    duplicate = deployment.skillq("auth", "api-key", "create", "ci-bot")
    assert duplicate.returncode == 4 and "exists" in duplicate.stderr

    assert deployment.skillq("auth", "api-key", "revoke", "ci-bot").returncode == 0
    refused = whoami(deployment, {"X-API-Key": key})
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]
    assert "revoked" in deployment.skillq("auth", "api-key", "list").stdout
    again = deployment.skillq("auth", "api-key", "revoke", "ci-bot")
    assert again.returncode == 3


def test_api_key_with_unknown_role_is_refused(deployment: Deployment) -> None:
    result = deployment.skillq("auth", "api-key", "create", "x", "--role", "root")
    assert result.returncode == 2 and "--role must be one of" in result.stderr


def test_minted_token_is_accepted_with_its_subject_roles_and_ttl(deployment: Deployment) -> None:
    result = deployment.skillq(
        "auth", "token", "create", "--sub", "bob", "--role", "viewer", "--ttl", "8h"
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="skillq-api")
    assert abs(claims["exp"] - (time.time() + 8 * 3600)) < 120
    me = whoami(deployment, {"Authorization": f"Bearer {token}"}).json()
    assert (me["subject"], me["roles"], me["method"]) == ("bob", ["viewer"], "jwt")


@pytest.mark.parametrize("ttl", ["8 hours", "0h", "-1h", "h"])
def test_bad_ttl_is_refused(deployment: Deployment, ttl: str) -> None:
    result = deployment.skillq(
        "auth", "token", "create", "--sub", "bob", "--role", "viewer", "--ttl", ttl
    )
    assert result.returncode == 2 and "--ttl" in result.stderr


def test_token_needs_a_secret(tmp_path: Path) -> None:
    settings = write_settings(tmp_path, {"server": {"data_dir": str(tmp_path / "data")}})
    result = Deployment(settings, "").skillq(
        "auth", "token", "create", "--sub", "a", "--role", "admin"
    )
    assert result.returncode == 2 and "auth.jwt.secret" in result.stderr
