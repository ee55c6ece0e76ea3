"""Who may reach the API through a browser: the `Host` and `Origin` every request must carry.

DNS rebinding points a hostile name at 127.0.0.1, so a web page the local user opens talks to
a loopback server with auth `none` as if it were its own site; its requests then carry the
hostile name in `Host`. A cross-site page's own requests carry its `Origin`. So: a request
whose `Host` is not allowed gets 400, and one whose `Origin` is neither allowed nor the
server's own (same origin, e.g. the dashboard) gets 403. A request without `Origin` is not
from a cross-site page (browsers send it on every cross-origin request) and passes.

The app sends no CORS headers at all, so a browser never lets another site read an answer or
send a non-simple request (JSON, `X-API-Key`, `Authorization`) to it.

Starlette's `TrustedHostMiddleware` checks only `Host`, compares names without ports and
answers in plain text; this policy reads the same settings as the MCP SDK's own check
(`"name:*"` for any port) and answers in the error envelope.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from skillq.api.errors import error_response
from skillq.errors import Forbidden, InvalidRequest
from skillq.settings import Settings


class InvalidHost(InvalidRequest):
    """A Host header this server does not answer to (DNS rebinding): 400 `invalid_host`."""

    code = "invalid_host"


class OriginNotAllowed(Forbidden):
    """A browser request from another site: 403 `origin_not_allowed`."""

    code = "origin_not_allowed"


_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_LOOPBACK_HOSTS = ("127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost", "[::1]")


@dataclass(frozen=True)
class AllowedNames:
    """`hosts` None: any Host. `origins` lists other sites a browser may call us from."""

    hosts: tuple[str, ...] | None
    origins: tuple[str, ...]


def allowed_names(settings: Settings) -> AllowedNames:
    """`[server] allowed_hosts/allowed_origins`, else the older `[mcp]` keys, else loopback
    names for a loopback-bound server, else any Host (behind a proxy, with auth)."""
    for section in (settings.server, settings.mcp):
        if section.allowed_hosts or section.allowed_origins:
            return AllowedNames(
                tuple(section.allowed_hosts) or None, tuple(section.allowed_origins)
            )
    if settings.server.host in _LOOPBACK:
        origins = tuple(
            f"{scheme}://{host}" for scheme in ("http", "https") for host in _LOOPBACK_HOSTS
        )
        return AllowedNames(_LOOPBACK_HOSTS, origins)
    return AllowedNames(None, ())


def name_allowed(value: str, allowed: tuple[str, ...]) -> bool:
    """Exact match, or `"name:*"` matching `name` with any port (the MCP SDK's rule, but
    only digits count as a port: `localhost:1.evil.example` is not `localhost:*`)."""
    for pattern in allowed:
        if value == pattern:
            return True
        port = value[len(pattern) - 1 :]
        if pattern.endswith(":*") and value.startswith(pattern[:-1]) and port.isdigit():
            return True
    return False


class TrustedOrigins:
    """Pure ASGI (in front of event streams). `exempt`: exact paths never checked (probes,
    which a load balancer calls by address) and path prefixes checked by their own code with
    the same names (the MCP transports)."""

    def __init__(
        self,
        app: ASGIApp,
        names: AllowedNames,
        exempt: tuple[str, ...] = (),
        exempt_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.names = names
        self.exempt = frozenset(exempt)
        self.exempt_prefixes = exempt_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or path in self.exempt
            or (self.exempt_prefixes and path.startswith(self.exempt_prefixes))
        ):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if self.names.hosts is not None and not name_allowed(host, self.names.hosts):
            response = error_response(InvalidHost("this server does not answer to that Host"))
            await response(scope, receive, send)
            return
        origin = headers.get("origin")
        if origin is not None and not self._origin_allowed(origin, host, scope):
            message = "cross-origin requests from that Origin are not allowed"
            await error_response(OriginNotAllowed(message))(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _origin_allowed(self, origin: str, host: str, scope: Scope) -> bool:
        if host and origin == f"{scope.get('scheme', 'http')}://{host}":
            return True
        return name_allowed(origin, self.names.origins)
