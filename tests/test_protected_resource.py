"""The protected resource's settings-dependent parts, in process (`jwt` mode, no provider):
the canonical URL from `[server] public_url` or the request, which URLs count as a token's
audience, what each auth mode publishes, scope claims, and the MCP guard's edges (batches,
unparsable and oversized bodies, hostile Host headers).
"""

from __future__ import annotations

import dataclasses
import time

import jwt
import pytest
from starlette.testclient import TestClient

from skillq import actors
from skillq.api.app import create_app
from skillq.api.scopes import needed_scope, roles_from_scopes
from skillq.errors import Forbidden
from skillq.settings import AuthSettings, JwtSettings
from tests.support import LOCAL_URL

SECRET = "resource-test-secret-" + "z" * 32
METADATA = "/.well-known/oauth-protected-resource"
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def client(mode: str = "jwt", **server: object) -> TestClient:
    settings = actors.settings
    auth = AuthSettings(mode=mode, jwt=JwtSettings(secret=SECRET))
    server_settings = dataclasses.replace(settings.server, **server)
    settings = dataclasses.replace(settings, auth=auth, server=server_settings)
    return TestClient(create_app(settings), base_url=LOCAL_URL)


def bearer(**claims: object) -> dict[str, str]:
    now = int(time.time())
    base = {"sub": "eve", "iss": "skillq", "aud": "skillq-api", "exp": now + 600, **claims}
    return {"Authorization": f"Bearer {jwt.encode(base, SECRET, algorithm='HS256')}"}


def test_public_url_is_the_resource_and_an_audience_whatever_the_host() -> None:
    public = "https://jobs.example.com"
    with client(public_url=public + "/", allowed_hosts=("127.0.0.1", "jobs.example.com")) as http:
        document = http.get(f"{METADATA}/mcp").json()
        assert document["resource"] == f"{public}/mcp"
        assert "authorization_servers" not in document  # jwt mode: no authorization server
        challenge = http.post("/mcp", json={}, headers=ACCEPT).headers["www-authenticate"]
        assert f'resource_metadata="{public}{METADATA}/mcp"' in challenge
        for audience, status in [
            (f"{public}/mcp", 200),
            (public, 200),
            (f"{LOCAL_URL}/mcp", 401),  # the request's own URL no longer counts
        ]:
            response = http.get("/api/v1/auth/whoami", headers=bearer(aud=audience))
            assert response.status_code == status, (audience, response.text)


def test_an_unchecked_host_is_never_an_audience() -> None:
    """Bound to all interfaces with no allowed_hosts, Host is whatever a client says, so a
    token minted for another resource could name it: only `auth.jwt.audience` counts."""
    with client(host="0.0.0.0") as http:
        forged_host = {"Host": "other.example"}
        document = http.get(METADATA, headers=forged_host).json()
        assert document["resource"] == "http://other.example"
        token = bearer(aud="http://other.example")
        response = http.get("/api/v1/auth/whoami", headers={**forged_host, **token})
        assert response.status_code == 401
        assert "audience" in response.json()["error"]["message"]


def test_auth_mode_none_publishes_nothing() -> None:
    with client(mode="none") as http:
        assert http.get(METADATA).status_code == 404
        assert http.get(f"{METADATA}/mcp").status_code == 404


def test_a_hostile_host_gets_no_metadata() -> None:
    with client() as http:
        assert http.get(METADATA, headers={"Host": "evil.example"}).status_code == 400


@pytest.mark.parametrize(
    ("claims", "roles"),
    [
        ({"scope": "openid skillq:read"}, {"viewer"}),
        ({"scp": ["skillq:submit", "profile"]}, {"submitter"}),
        ({"scp": "skillq:admin skillq:read"}, {"admin", "viewer"}),
        ({"scope": ["skillq:admin"]}, {"admin"}),
        ({"scope": 42, "scp": {"skillq:admin": True}}, set()),
        ({"scope": "skillq:readx SKILLQ:ADMIN"}, set()),
    ],
)
def test_scope_claims_grant_roles(claims: dict, roles: set[str]) -> None:
    assert roles_from_scopes(claims) == roles


def test_scopes_add_to_the_roles_claim() -> None:
    with client() as http:
        me = http.get("/api/v1/auth/whoami", headers=bearer(roles=["viewer"], scope="skillq:admin"))
        assert me.json()["roles"] == ["admin", "viewer"]


def test_only_role_refusals_carry_a_scope_challenge() -> None:
    assert needed_scope(Forbidden("not yours")) is None
    assert needed_scope(Forbidden("x", [{"path": "scope", "message": "rm -rf"}])) is None
    with client() as http:
        reader = bearer(scope="skillq:read")
        # An admin-only argument on REST: the refusal names the scope that would do.
        named = http.get("/api/v1/collections", params={"owner": "bob"}, headers=reader)
        assert named.status_code == 403
        assert 'scope="skillq:admin"' in named.headers["www-authenticate"]


def test_the_mcp_guard_refuses_a_batch_whole_and_passes_what_it_cannot_read() -> None:
    mcp = dataclasses.replace(actors.settings.mcp, max_body_size=4096)
    settings = dataclasses.replace(
        actors.settings, auth=AuthSettings(mode="jwt", jwt=JwtSettings(secret=SECRET)), mcp=mcp
    )
    reader = {**ACCEPT, **bearer(scope="skillq:read")}
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "list_jobs"}},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "retry_job"}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
    ]
    with TestClient(create_app(settings), base_url=LOCAL_URL) as http:
        refused = http.post("/mcp", json=batch, headers=reader)
        assert refused.status_code == 403
        assert [answer["id"] for answer in refused.json()] == [1, 2]
        # Not JSON, or past the body limit: the SDK answers, as without the guard.
        garbled = http.post("/mcp", content=b"{nope", headers=reader)
        assert garbled.status_code == 400 and "jsonrpc" in garbled.text
        deep = http.post("/mcp", content=b"[" * 2000 + b"]" * 2000, headers=reader)
        assert deep.status_code < 500, deep.text
        huge = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "sleep"}}
        huge["params"]["arguments"] = {"pad": "x" * 5000}
        assert http.post("/mcp", json=huge, headers=reader).status_code == 413
        # Unknown tools are the SDK's to answer, not a 403.
        unknown = {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "nope"}}
        assert http.post("/mcp", json=unknown, headers=reader).status_code != 403


def test_settings_refuse_a_public_url_with_a_path(tmp_path) -> None:
    from skillq.errors import SettingsError
    from skillq.settings import load_settings

    path = tmp_path / "settings.toml"
    path.write_text('[server]\npublic_url = "https://jobs.example.com/skillq"\n')
    with pytest.raises(SettingsError, match=r"server\.public_url"):
        load_settings(path)
    path.write_text('[server]\npublic_url = "https://jobs.example.com:8443"\n')
    assert load_settings(path).server.public_url == "https://jobs.example.com:8443"
