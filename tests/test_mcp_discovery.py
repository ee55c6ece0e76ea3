"""Authorization discovery against a live skillq in `oidc` mode and the test-double provider:
the protected resource metadata (RFC 9728), the 401 and 403 challenges (RFC 6750), scopes
granting roles, the canonical URL as a token audience (RFC 8707), and the Python and
TypeScript MCP SDKs' own OAuth clients finding their way from a bare 401 to the provider
and back with a token, over Streamable HTTP and legacy SSE.

The TypeScript SDK is an npm package, installed once into a cache folder
(`$SKILLQ_TEST_CACHE`, default `~/.cache/skillq-tests`); without node and npm, or when npm
cannot install it, its test skips.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from mcp.shared.exceptions import MCPError

from tests.mcp_clients import connect
from tests.oidc_provider import Provider
from tests.support import ROOT, start_api, write_settings

METADATA = "/.well-known/oauth-protected-resource"
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
DEFAULT_SCOPE = 'scope="skillq:read skillq:submit"'


@pytest.fixture(scope="module")
def oidc_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Provider]]:
    """A live API (no worker: job calls return their handle) trusting the provider."""
    directory = tmp_path_factory.mktemp("mcp-discovery")
    provider = Provider()
    provider.add_key("k1")
    settings_path = write_settings(
        directory,
        {
            "server": {"data_dir": str(directory / "data")},
            "auth": {"mode": "oidc"},
            "auth.oidc": {"provider_url": provider.issuer, "jwks_min_refresh_secs": 0},
            "mcp": {"inline_wait_secs": 0},
        },
    )
    api, base_url = start_api(settings_path, directory)
    try:
        yield base_url, provider
    finally:
        api.stop()
        provider.close()


def query_of(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


def bearer(provider: Provider, **claims: object) -> dict[str, str]:
    return {"Authorization": f"Bearer {provider.token('k1', **claims)}"}


def test_the_metadata_names_resource_provider_scopes_and_bearer_methods(oidc_api) -> None:
    base_url, provider = oidc_api
    stale = {"Authorization": "Bearer not-a-token"}  # ignored: the metadata is public
    for path, resource in [(METADATA, base_url), (f"{METADATA}/mcp", f"{base_url}/mcp")]:
        response = httpx.get(base_url + path, headers=stale, timeout=10)
        assert response.status_code == 200, response.text
        document = response.json()
        assert document["resource"] == resource
        assert document["authorization_servers"] == [provider.issuer]
        assert document["scopes_supported"] == ["skillq:read", "skillq:submit", "skillq:admin"]
        assert document["bearer_methods_supported"] == ["header"]


@pytest.mark.parametrize(
    ("method", "path", "metadata"),
    [
        ("POST", "/mcp", f"{METADATA}/mcp"),
        ("GET", "/mcp/sse", f"{METADATA}/mcp"),
        ("POST", "/mcp/message?session_id=0", f"{METADATA}/mcp"),
        ("GET", "/api/v1/jobs", METADATA),
    ],
)
def test_a_401_points_at_the_metadata(oidc_api, method: str, path: str, metadata: str) -> None:
    base_url, provider = oidc_api
    with httpx.Client(base_url=base_url, timeout=10) as http:
        bare = http.request(method, path, json={}, headers=ACCEPT)
        wrong = http.request(method, path, json={}, headers={**ACCEPT, **bearer(provider, aud="x")})
    for response in (bare, wrong):
        assert response.status_code == 401, response.text
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith("Bearer ")
        assert f'resource_metadata="{base_url}{metadata}"' in challenge
        assert DEFAULT_SCOPE in challenge
    # RFC 6750 §3.1: no error code when the request carried no credentials.
    assert "error=" not in bare.headers["www-authenticate"]
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    assert "audience" in wrong.headers["www-authenticate"]


def test_scopes_grant_roles_and_a_missing_one_is_named(oidc_api) -> None:
    base_url, provider = oidc_api
    reader = bearer(provider, groups=None, scope="openid skillq:read")
    submitter = bearer(provider, groups=None, scp=["skillq:submit"])
    roleless = bearer(provider, groups=None, scope="openid email")
    with httpx.Client(base_url=base_url, timeout=10) as http:
        assert http.get("/api/v1/jobs", headers=reader).status_code == 200
        refused = http.post("/api/v1/jobs", json={"type": "sleep"}, headers=reader)
        submitted = http.post("/api/v1/jobs", json={"type": "sleep"}, headers=submitter)
        not_admin = http.put("/api/v1/workers/scale", json={"threads": {}}, headers=submitter)
        nothing = http.get("/api/v1/jobs", headers=roleless)
    assert submitted.status_code == 202, submitted.text
    for response, scope in [
        (refused, "skillq:submit"),
        (not_admin, "skillq:admin"),
        (nothing, "skillq:read"),
    ]:
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "forbidden"
        challenge = response.headers["www-authenticate"]
        assert 'error="insufficient_scope"' in challenge
        assert f'scope="{scope}"' in challenge
        assert f'resource_metadata="{base_url}{METADATA}"' in challenge


def test_the_canonical_url_is_an_accepted_audience(oidc_api) -> None:
    base_url, provider = oidc_api
    audiences = {
        base_url: 200,
        f"{base_url}/": 200,
        f"{base_url}/mcp": 200,
        "skillq-api": 200,
        "http://127.0.0.1:1/mcp": 401,  # another resource's token
        f"{base_url}/api": 401,
    }
    with httpx.Client(base_url=base_url, timeout=10) as http:
        answers = {
            audience: http.get("/api/v1/jobs", headers=bearer(provider, aud=audience)).status_code
            for audience in audiences
        }
    assert answers == audiences


def test_streamable_http_refuses_a_call_the_scope_does_not_allow_with_403(oidc_api) -> None:
    base_url, provider = oidc_api
    reader = bearer(provider, groups=None, scope="skillq:read")
    calls = [
        {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "sleep"}},
        {"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {"name": "cancel_job"}},
        {"jsonrpc": "2.0", "id": 9, "method": "tasks/cancel", "params": {"taskId": "x"}},
    ]
    with httpx.Client(base_url=base_url, timeout=10, headers=ACCEPT) as http:
        for call in calls:
            response = http.post("/mcp", json=call, headers=reader)
            assert response.status_code == 403, response.text
            challenge = response.headers["www-authenticate"]
            assert 'error="insufficient_scope", ' in challenge
            assert 'scope="skillq:submit"' in challenge
            assert f'resource_metadata="{base_url}{METADATA}/mcp"' in challenge
            answer = response.json()
            assert answer["id"] == call["id"]
            assert answer["error"]["data"]["code"] == "forbidden"
            assert "skillq:submit" in answer["error"]["message"]


@pytest.mark.parametrize("transport", ["http", "http-2025", "sse"])
def test_a_read_only_token_reads_and_is_refused_submitting(oidc_api, transport: str) -> None:
    """Streamable HTTP (both eras) refuses in HTTP, which the SDK reports as the call's error;
    legacy SSE cannot (its POST only acknowledges), so there the tool answers `forbidden`."""
    base_url, provider = oidc_api
    reader = bearer(provider, groups=None, scope="skillq:read")

    async def main():
        async with connect(transport, base_url=base_url, headers=reader) as client:
            listed = await client.call_tool("list_jobs", {})
            try:
                return listed, await client.call_tool("sleep", {"seconds": 0})
            except MCPError as error:
                return listed, error

    listed, submit = anyio.run(main)
    assert not listed.is_error
    if transport == "sse":
        assert submit.is_error
        assert submit.structured_content["error"]["code"] == "forbidden"
        assert "skillq:submit" in submit.structured_content["error"]["message"]
    else:
        assert isinstance(submit, MCPError)
        assert "skillq:submit" in str(submit)


class MemoryStorage:
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


@pytest.mark.parametrize("transport", ["http", "sse"])
def test_the_sdk_oauth_client_discovers_the_provider_and_gets_in(oidc_api, transport) -> None:
    """From a bare 401: metadata, the provider's metadata, registration, then the redirect
    (captured: the test plays the user), a token for the MCP resource, and the call."""
    base_url, provider = oidc_api
    redirects: list[str] = []

    async def redirect(url: str) -> None:
        redirects.append(url)
        provider.last_scope = parse_qs(urlsplit(url).query)["scope"][0]

    async def callback() -> AuthorizationCodeResult:
        state = parse_qs(urlsplit(redirects[-1]).query)["state"][0]
        return AuthorizationCodeResult(code="the-code", state=state)

    server_url = f"{base_url}/mcp" if transport == "http" else f"{base_url}/mcp/sse"
    oauth = OAuthClientProvider(
        server_url=server_url,
        client_metadata=OAuthClientMetadata(
            client_name="skillq test",
            redirect_uris=["http://127.0.0.1:1/callback"],
            grant_types=["authorization_code"],
            token_endpoint_auth_method="none",
        ),
        storage=MemoryStorage(),
        redirect_handler=redirect,
        callback_handler=callback,
    )

    async def main():
        if transport == "http":
            http = httpx2.AsyncClient(auth=oauth, timeout=30)
            stream = streamable_http_client(server_url, http_client=http)
            mode = "auto"
        else:
            stream, mode = sse_client(server_url, auth=oauth, timeout=30), "legacy"
        async with Client(stream, mode=mode) as client:
            handle = await client.call_tool("sleep", {"seconds": 0})
            assert not handle.is_error, handle
            job_id = handle.structured_content["job_id"]
            return await client.call_tool("job_status", {"job_id": job_id})

    result = anyio.run(main)
    assert len(redirects) == 1
    query = query_of(redirects[0])
    assert redirects[0].startswith(f"{provider.issuer}/authorize?")
    assert query["resource"] == f"{base_url}/mcp"
    assert query["scope"] == "skillq:read skillq:submit"
    assert query["client_id"].startswith("client-")
    assert provider.token_requests[-1]["resource"] == f"{base_url}/mcp"
    # The token carries the MCP resource as its audience and only scopes: both are honoured.
    assert result.structured_content["owner"] == "ada@example.com"


TS_SDK = "@modelcontextprotocol/sdk@1.32.2"


@pytest.fixture(scope="module")
def ts_sdk() -> Path:
    """A folder holding the TypeScript SDK and our script (ESM resolves from the script)."""
    cache = Path(os.environ.get("SKILLQ_TEST_CACHE", "~/.cache/skillq-tests")).expanduser()
    prefix = cache / f"mcp-ts-sdk-{TS_SDK.rsplit('@', 1)[1]}"
    if not (prefix / "node_modules" / "@modelcontextprotocol" / "sdk").is_dir():
        if shutil.which("node") is None or shutil.which("npm") is None:
            pytest.skip("node and npm are needed for the TypeScript SDK")
        prefix.mkdir(parents=True, exist_ok=True)
        installed = subprocess.run(
            ["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund", TS_SDK],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if installed.returncode != 0:
            pytest.skip(f"npm could not install {TS_SDK}: {installed.stderr[-500:]}")
    shutil.copy(ROOT / "tests" / "js" / "oauth_discovery.mjs", prefix)
    return prefix


@pytest.mark.parametrize(("transport", "path"), [("http", "/mcp"), ("sse", "/mcp/sse")])
def test_the_typescript_sdk_oauth_client_gets_in(oidc_api, ts_sdk, transport, path) -> None:
    base_url, provider = oidc_api
    provider.last_scope = "skillq:read"  # what the user grants: reading is enough here
    done = subprocess.run(
        ["node", str(ts_sdk / "oauth_discovery.mjs"), base_url + path, transport],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    query = query_of(answer["redirect"])
    assert answer["redirect"].startswith(f"{provider.issuer}/authorize?")
    assert query["resource"] == f"{base_url}/mcp"
    assert query["scope"] == "skillq:read skillq:submit"
    assert provider.token_requests[-1]["resource"] == f"{base_url}/mcp"
    assert answer["result"]["isError"] is False
    assert "jobs" in answer["result"]["structuredContent"]
