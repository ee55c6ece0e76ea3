"""This server as an OAuth 2.0 protected resource, so clients can discover how to get a token.

    GET /.well-known/oauth-protected-resource            metadata of the REST API (RFC 9728)
    GET /.well-known/oauth-protected-resource/mcp        metadata of the MCP endpoint

Each names its resource (the canonical URL: `[server] public_url`, else the request's own
scheme and Host), the authorization server in `oidc` mode (the provider, whose issuer must be
`auth.oidc.provider_url`), `scopes_supported` and `bearer_methods_supported: ["header"]`. In
`jwt` mode there is no authorization server to name (tokens come from `skillq auth token`
or whoever holds the key), so the metadata lists none; in `none` mode nothing is protected
and these routes do not exist.

Every 401 carries `WWW-Authenticate: Bearer realm="skillq", resource_metadata="...",
scope="..."` pointing at the metadata of the resource asked for, and `error="invalid_token"`
only when a credential was sent (RFC 6750 §3.1); a 403 for a missing role carries
`error="insufficient_scope"` and the scope that would do.

Audiences (RFC 8707): a token whose `aud` is this server's canonical URL (root or MCP
endpoint, with or without a trailing slash) is accepted beside `auth.*.audience`. A URL taken
from the request counts only while Host is checked (`allowed_names`): otherwise a token
minted for another resource could be replayed here with that resource's name in Host.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from skillq.api.scopes import DEFAULT_SCOPES, SCOPES, needed_scope
from skillq.api.trusted_origins import allowed_names
from skillq.errors import SkillqError, Unauthorized
from skillq.settings import Settings

METADATA_PATH = "/.well-known/oauth-protected-resource"
REALM = "skillq"


def _quoted(value: str) -> str:
    """An RFC 7235 quoted-string that cannot end early or smuggle a parameter."""
    cleaned = "".join(c for c in value if c.isprintable()).replace("\\", "").replace('"', "'")
    return f'"{cleaned}"'


class ProtectedResource:
    def __init__(self, settings: Settings) -> None:
        public_url = settings.server.public_url
        self.public_url = public_url.rstrip("/") if public_url else None
        endpoint = settings.mcp.endpoint.rstrip("/") or "/mcp"
        self.mcp_endpoint = endpoint if settings.mcp.enabled else None
        self.host_checked = allowed_names(settings).hosts is not None
        self.mode = settings.auth.mode
        self.issuer = settings.auth.oidc.provider_url if self.mode == "oidc" else None

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def origin(self, conn: HTTPConnection) -> str:
        if self.public_url is not None:
            return self.public_url
        return f"{conn.url.scheme}://{conn.url.netloc}"

    def is_mcp(self, path: str) -> bool:
        endpoint = self.mcp_endpoint
        return endpoint is not None and (path == endpoint or path.startswith(f"{endpoint}/"))

    def resource(self, conn: HTTPConnection, *, mcp: bool) -> str:
        """The canonical URL of the REST API (the origin) or of the MCP endpoint."""
        return self.origin(conn) + self._suffix(mcp)

    def _suffix(self, mcp: bool) -> str:
        return (self.mcp_endpoint or "") if mcp else ""

    def metadata_url(self, conn: HTTPConnection, *, mcp: bool) -> str:
        return self.origin(conn) + METADATA_PATH + self._suffix(mcp)

    def audiences(self, conn: HTTPConnection) -> tuple[str, ...]:
        """The canonical URLs a token's `aud` may name, besides `auth.*.audience`."""
        if self.public_url is None and not self.host_checked:
            return ()
        origin = self.origin(conn)
        urls = [origin] if self.mcp_endpoint is None else [origin, origin + self.mcp_endpoint]
        return tuple(form for url in urls for form in (url, url + "/"))

    def challenge(
        self,
        conn: HTTPConnection,
        *,
        error: str | None = None,
        description: str | None = None,
        scopes: tuple[str, ...] = DEFAULT_SCOPES,
    ) -> str:
        """A `WWW-Authenticate` value for `conn`'s resource: no `error` when the client sent
        no credentials, so it knows to start authorization rather than that a token failed."""
        parts = [f"realm={_quoted(REALM)}"]
        if error is not None:
            parts.append(f"error={_quoted(error)}")
            if description:
                parts.append(f"error_description={_quoted(description)}")
        url = self.metadata_url(conn, mcp=self.is_mcp(conn.url.path))
        parts += [f"resource_metadata={_quoted(url)}", f"scope={_quoted(' '.join(scopes))}"]
        return "Bearer " + ", ".join(parts)

    def challenge_for(self, conn: HTTPConnection, error: SkillqError) -> dict[str, str] | None:
        """The header a REST error answer carries: on a 401, and on a 403 for a missing role."""
        if isinstance(error, Unauthorized):
            return {"WWW-Authenticate": self.challenge(conn)}
        scope = needed_scope(error)
        if scope is not None and self.enabled:
            value = self.challenge(conn, error="insufficient_scope", scopes=(scope,))
            return {"WWW-Authenticate": value}
        return None

    def metadata(self, conn: HTTPConnection, *, mcp: bool) -> dict[str, object]:
        document: dict[str, object] = {
            "resource": self.resource(conn, mcp=mcp),
            "resource_name": "skillq MCP server" if mcp else "skillq REST API",
        }
        if self.issuer is not None:
            document["authorization_servers"] = [self.issuer]
        document["scopes_supported"] = list(SCOPES)
        document["bearer_methods_supported"] = ["header"]
        return document

    def routes(self) -> list[Route]:
        if not self.enabled:
            return []

        async def root(request: Request) -> JSONResponse:
            return JSONResponse(self.metadata(request, mcp=False))

        async def mcp(request: Request) -> JSONResponse:
            return JSONResponse(self.metadata(request, mcp=True))

        routes = [Route(METADATA_PATH, root, methods=["GET"])]
        if self.mcp_endpoint is not None:
            routes.append(Route(METADATA_PATH + self.mcp_endpoint, mcp, methods=["GET"]))
        return routes
