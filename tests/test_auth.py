"""Authentication and authorization in `jwt` mode, in process on the embedded store:
every way a token or key can be wrong, roles, and per-owner isolation.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
import uuid
from collections.abc import Iterator

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.testclient import TestClient

from skillq import actors
from skillq.api.app import create_app
from skillq.settings import AuthSettings, JwtSettings
from skillq.storage import api_keys
from skillq.storage.database import connection
from tests.support import LOCAL_URL, store_outage

SECRET = "test-secret-" + "x" * 32
ISSUER, AUDIENCE = "skillq", "skillq-api"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def pem(private_key) -> str:
    return (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def app_with(key_cache_secs: float = 0, **jwt_settings: object) -> TestClient:
    auth = AuthSettings(
        mode="jwt", jwt=JwtSettings(**jwt_settings), api_key_cache_secs=key_cache_secs
    )
    return TestClient(
        create_app(dataclasses.replace(actors.settings, auth=auth)), base_url=LOCAL_URL
    )


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with app_with(secret=SECRET, public_key=pem(RSA_KEY)) as client:
        yield client


def claims(**overrides: object) -> dict:
    now = int(time.time())
    base = {
        "sub": "alice",
        "roles": ["submitter"],
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        # A day: the parametrized tokens below are made when the suite is collected, which
        # can be long before their test runs.
        "exp": now + 86400,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def token(key: object = SECRET, algorithm: str = "HS256", **overrides: object) -> str:
    return jwt.encode(claims(**overrides), key, algorithm=algorithm)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def unsigned(**overrides: object) -> str:
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims(**overrides))}."


def assert_401(response, reason: str | None = None) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith('Bearer realm="skillq"')
    error = response.json()["error"]
    assert error["code"] == "unauthorized"
    if reason:
        assert reason in error["message"]


def test_valid_tokens_of_each_key_type_are_accepted(client: TestClient) -> None:
    for credential in (token(), token(RSA_KEY, "RS256")):
        me = client.get("/api/v1/auth/whoami", headers=bearer(credential)).json()
        assert (me["subject"], me["roles"], me["method"]) == ("alice", ["submitter"], "jwt")
    with app_with(public_key=pem(EC_KEY)) as ec_client:
        response = ec_client.get("/api/v1/auth/whoami", headers=bearer(token(EC_KEY, "ES256")))
        assert response.status_code == 200
        assert_401(ec_client.get("/api/v1/auth/whoami", headers=bearer(token())), "'HS256'")


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "authentication required"),
        ({"Authorization": "Basic YWxpY2U6cHc="}, "Bearer <token>"),
        ({"Authorization": "Bearer"}, "Bearer <token>"),
        (bearer("not-a-jwt"), "well-formed"),
        (bearer(token(exp=int(time.time()) - 60)), "expired"),
        (bearer(token(nbf=int(time.time()) + 86400)), "not valid yet"),
        (bearer(token(iss="someone-else")), "issuer"),
        (bearer(token(aud="another-api")), "audience"),
        (bearer(token(key="wrong-secret-" + "y" * 32)), "signature"),
        (bearer(token(sub=None)), "'sub'"),
        (bearer(token(exp=None)), "'exp'"),
        (bearer(unsigned()), "'none'"),
        ({"X-API-Key": "skq_made-up"}, "unknown or revoked"),
        (bearer("skq_made-up"), "unknown or revoked"),
    ],
)
def test_bad_credentials_are_401_with_a_challenge(client: TestClient, headers, reason) -> None:
    assert_401(client.get("/api/v1/jobs", headers=headers), reason)


def test_a_key_store_outage_is_503_in_the_envelope_not_a_500(client: TestClient) -> None:
    with store_outage():
        for headers in ({"X-API-Key": "skq_made-up"}, bearer("skq_made-up")):
            response = client.get("/api/v1/jobs", headers=headers)
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "5"
            assert "www-authenticate" not in response.headers
            assert response.json() == {
                "error": {
                    "code": "service_unavailable",
                    "message": "the API key store is unavailable",
                    "details": None,
                }
            }
        # A token needs no store: it still works, up to the store-backed route itself.
        response = client.get("/api/v1/jobs", headers=bearer(token()))
        assert response.status_code == 503
        assert response.json()["error"]["message"].startswith("the job store is unavailable")


def test_expiry_has_a_small_leeway(client: TestClient) -> None:
    just_expired = token(exp=int(time.time()) - 2)
    assert client.get("/api/v1/auth/whoami", headers=bearer(just_expired)).status_code == 200


def test_hs256_signed_with_the_public_key_is_refused() -> None:
    """The classic confusion: the server holds only an RSA public key, the attacker signs
    HS256 with that (public) PEM as the secret."""
    public_pem = pem(RSA_KEY).encode()
    forged = jwt.api_jws.PyJWS()
    forged._algorithms["HS256"].prepare_key = lambda key: key  # pyjwt refuses PEM secrets
    payload = json.dumps(claims(roles=["admin"])).encode()
    forged_token = forged.encode(payload, public_pem, algorithm="HS256")
    with app_with(public_key=pem(RSA_KEY)) as rsa_only:
        assert_401(rsa_only.get("/api/v1/jobs", headers=bearer(forged_token)), "'HS256'")


def test_probes_stay_open_and_metrics_follow_the_setting(client: TestClient) -> None:
    for path in ("/health", "/live", "/ready", "/version", "/metrics", "/openapi.json"):
        assert client.get(path).status_code == 200, path
    auth = AuthSettings(mode="jwt", jwt=JwtSettings(secret=SECRET), protect_metrics=True)
    with TestClient(
        create_app(dataclasses.replace(actors.settings, auth=auth)), base_url=LOCAL_URL
    ) as protected:
        assert_401(protected.get("/metrics"))
        assert protected.get("/metrics", headers=bearer(token())).status_code == 200
        assert protected.get("/live").status_code == 200


def test_roles_allow_what_they_name(client: TestClient) -> None:
    viewer = bearer(token(roles=["viewer"]))
    nobody = bearer(token(roles=[]))
    body = {"type": "sleep", "params": {}}
    forbidden = client.post("/api/v1/jobs", json=body, headers=viewer)
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["code"] == "forbidden"
    assert client.get("/api/v1/jobs", headers=viewer).status_code == 200
    assert client.get("/api/v1/jobs", headers=nobody).status_code == 403
    assert client.get("/api/v1/stats", headers=nobody).status_code == 403
    assert client.get("/api/v1/auth/whoami", headers=nobody).status_code == 200
    job = client.post("/api/v1/jobs", json=body, headers=bearer(token(sub="viewer"))).json()
    viewer_own = bearer(token(sub="viewer", roles="viewer"))
    assert client.delete(f"/api/v1/jobs/{job['id']}", headers=viewer_own).status_code == 403
    assert client.get(f"/api/v1/jobs/{job['id']}", headers=viewer_own).status_code == 200


def test_owners_are_isolated_and_admins_see_all(client: TestClient) -> None:
    alice, bob = bearer(token(sub="alice")), bearer(token(sub=f"bob-{uuid.uuid4().hex[:6]}"))
    admin = bearer(token(sub="root", roles=["admin"]))
    job = client.post("/api/v1/jobs", json={"type": "sleep"}, headers=alice).json()
    assert job["owner"] == "alice"
    url = f"/api/v1/jobs/{job['id']}"
    for method, path in [
        ("GET", url),
        ("DELETE", url),
        ("POST", f"{url}/retry"),
        ("GET", f"{url}/stream"),
    ]:
        response = client.request(method, path, headers=bob)
        assert response.status_code == 404, (method, path, response.text)
    # Indistinguishable from an id that does not exist.
    assert client.get(url, headers=bob).json()["error"] == {
        "code": "not_found",
        "message": f'no job with id "{job["id"]}"',
        "details": None,
    }
    bob_list = client.get("/api/v1/jobs", headers=bob).json()
    assert bob_list["total"] == 0 and bob_list["jobs"] == []
    assert client.get("/api/v1/stats", headers=bob).json()["total"] == 0
    assert client.get(url, headers=admin).status_code == 200
    admin_list = client.get("/api/v1/jobs?limit=100", headers=admin).json()
    assert job["id"] in [j["id"] for j in admin_list["jobs"]]
    assert client.delete(url, headers=admin).json()["state"] == "cancelled"
    assert client.post(f"{url}/retry", headers=alice).status_code == 202


def test_api_keys_work_in_header_or_bearer_until_revoked(client: TestClient) -> None:
    name = f"ci-{uuid.uuid4().hex[:8]}"
    with connection():
        _, key = api_keys.create_key(name, "viewer")
        assert key not in {row.digest for row in api_keys.list_keys()}
    for headers in ({"X-API-Key": key}, bearer(key)):
        me = client.get("/api/v1/auth/whoami", headers=headers).json()
        assert (me["subject"], me["roles"], me["method"]) == (name, ["viewer"], "api_key")
    assert (
        client.post("/api/v1/jobs", json={"type": "sleep"}, headers={"X-API-Key": key}).status_code
        == 403
    )
    with connection():
        assert api_keys.revoke_key(name)
        assert not api_keys.revoke_key(name)
    assert_401(client.get("/api/v1/jobs", headers={"X-API-Key": key}), "revoked")


def test_a_checked_key_is_trusted_for_the_cache_period() -> None:
    """The documented trade-off of `auth.api_key_cache_secs`: a revoked key keeps working in
    a process that checked it recently (here: within 300 s), and not in a fresh one."""
    name = f"cached-{uuid.uuid4().hex[:8]}"
    with connection():
        _, key = api_keys.create_key(name, "viewer")
    with app_with(key_cache_secs=300, secret=SECRET) as cached:
        assert cached.get("/api/v1/jobs", headers={"X-API-Key": key}).status_code == 200
        with connection():
            api_keys.revoke_key(name)
        assert cached.get("/api/v1/jobs", headers={"X-API-Key": key}).status_code == 200
    with app_with(key_cache_secs=300, secret=SECRET) as fresh:
        assert_401(fresh.get("/api/v1/jobs", headers={"X-API-Key": key}), "revoked")
