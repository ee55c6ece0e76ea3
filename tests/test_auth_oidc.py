"""`auth.mode = "oidc"` against a small real identity provider started by the test: an
http.server on 127.0.0.1 serving discovery and a JWKS of keys the test generates, which it
rotates, so the API's discovery, key cache, refresh on unknown key ids and its rate limit
all run over real HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import time
from collections.abc import Iterator

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.testclient import TestClient

from skillq import actors
from skillq.api.app import create_app
from skillq.api.auth.oidc import OidcVerifier
from skillq.settings import AuthSettings, OidcSettings
from skillq.tokens import TokenError
from tests.oidc_provider import AUDIENCE, Provider
from tests.support import LOCAL_URL


@pytest.fixture
def provider() -> Iterator[Provider]:
    provider = Provider()
    provider.add_key("k1")
    yield provider
    provider.close()


def client_for(provider: Provider, min_refresh_secs: float) -> TestClient:
    oidc = OidcSettings(
        provider_url=provider.issuer, audience=AUDIENCE, jwks_min_refresh_secs=min_refresh_secs
    )
    settings = dataclasses.replace(actors.settings, auth=AuthSettings(mode="oidc", oidc=oidc))
    return TestClient(create_app(settings), base_url=LOCAL_URL)


def whoami(client: TestClient, token: str):
    return client.get("/api/v1/auth/whoami", headers={"Authorization": f"Bearer {token}"})


def test_user_and_roles_come_from_the_configured_claims(provider: Provider) -> None:
    with client_for(provider, 0) as client:
        response = whoami(client, provider.token("k1"))
        assert response.status_code == 200, response.text
        me = response.json()
        assert (me["subject"], me["method"]) == ("ada@example.com", "oidc")
        assert me["roles"] == ["staff", "submitter"] and me["can_submit"]
        job = client.post(
            "/api/v1/jobs",
            json={"type": "sleep"},
            headers={"Authorization": f"Bearer {provider.token('k1')}"},
        ).json()
        assert job["owner"] == "ada@example.com"
        # The key set is cached: more requests, no more fetches.
        for _ in range(3):
            assert whoami(client, provider.token("k1")).status_code == 200
        assert provider.jwks_fetches == 1


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"iss": "http://127.0.0.1:1"}, "issuer"),
        ({"aud": "other"}, "audience"),
        ({"exp": int(time.time()) - 120}, "expired"),
        ({"email": None}, "names no user"),
    ],
)
def test_bad_provider_tokens_are_401(provider: Provider, overrides: dict, reason: str) -> None:
    with client_for(provider, 0) as client:
        response = whoami(client, provider.token("k1", **overrides))
        assert response.status_code == 401
        assert reason in response.json()["error"]["message"]
        assert response.headers["www-authenticate"].startswith('Bearer realm="skillq"')


def test_symmetric_and_unsigned_tokens_are_refused(provider: Provider) -> None:
    with client_for(provider, 0) as client:
        forged = jwt.encode({"sub": "x", "email": "x"}, "s" * 32, algorithm="HS256")
        assert "'HS256'" in whoami(client, forged).json()["error"]["message"]
        unsigned = jwt.encode({"sub": "x", "email": "x"}, None, algorithm="none")
        assert "'none'" in whoami(client, unsigned).json()["error"]["message"]
        odd_kid = provider.token("k1").split(".")
        header = {"alg": "RS256", "kid": ["k1"]}
        odd_kid[0] = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
        response = whoami(client, ".".join(odd_kid))
        assert response.status_code == 401  # never a 500 for a header we cannot use
        assert provider.jwks_fetches == 0


def test_rotated_keys_are_fetched_on_the_first_unknown_kid(provider: Provider) -> None:
    with client_for(provider, 0) as client:
        assert whoami(client, provider.token("k1")).status_code == 200
        provider.add_key("k2", kind="ec")
        del provider.keys["k1"]
        response = whoami(client, provider.token("k2"))
        assert response.status_code == 200, response.text
        assert provider.jwks_fetches == 2
        # The retired key's tokens stop working once the new set is loaded.
        old = jwt.encode(
            {"sub": "x", "email": "x", "iss": provider.issuer, "aud": AUDIENCE, "exp": 2**31},
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
            algorithm="RS256",
            headers={"kid": "k1"},
        )
        assert whoami(client, old).status_code == 401


def test_unknown_kids_refresh_at_most_once_per_interval(provider: Provider) -> None:
    """A clock we move by hand: refreshes depend on elapsed time, not on waiting."""
    now = [1000.0]
    settings = OidcSettings(
        provider_url=provider.issuer, audience=AUDIENCE, jwks_min_refresh_secs=60
    )
    verifier = OidcVerifier(settings, clock=lambda: now[0])

    async def attempt(kid: str) -> str:
        try:
            return (await verifier.verify(provider.token(kid)))["email"]
        except TokenError as error:
            return str(error)

    async def scenario() -> None:
        assert await attempt("k1") == "ada@example.com"
        provider.add_key("k2")
        for _ in range(5):  # a flood of tokens with a key id we do not know yet
            assert "not one of the provider's" in await attempt("k2")
        assert provider.jwks_fetches == 1
        now[0] += 61
        assert await attempt("k2") == "ada@example.com"
        assert provider.jwks_fetches == 2

    asyncio.run(scenario())


def test_unreachable_provider_is_503_then_recovers(provider: Provider) -> None:
    provider.up = False
    with client_for(provider, 0) as client:
        response = whoami(client, provider.token("k1"))
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "service_unavailable"
        assert client.get("/live").status_code == 200
        provider.up = True
        assert whoami(client, provider.token("k1")).status_code == 200
