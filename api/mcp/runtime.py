"""What every MCP handler shares: the coordinator, the MCP settings, the tool catalogue, and
who the caller is.

The caller is read from the HTTP request the message came on (`scope["user"]`, set by the
same authentication middleware as REST), so a stateful session cannot outlive or borrow
another principal's rights; stdio has no request and runs as the local principal.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Any

from mcp.server.context import ServerRequestContext

from skillq.api.mcp.catalogue import ToolCatalogue
from skillq.api.principal import LOCAL, VIEWER, AuthenticatedPrincipal, Principal
from skillq.errors import Unauthorized
from skillq.jobs.coordinator import JobCoordinator
from skillq.settings import McpSettings


@dataclass
class McpRuntime:
    coordinator: JobCoordinator
    settings: McpSettings
    #: The principal of a transport with no HTTP request (stdio).
    local_principal: Principal = LOCAL
    catalogue: ToolCatalogue = field(init=False)
    #: Set when the app's lifespan ends: handlers cancelled then must not cancel their jobs.
    stopped: bool = False
    #: Calls waiting inline for their job right now (a shutdown lets them answer first).
    waiting: int = 0

    def __post_init__(self) -> None:
        self.catalogue = ToolCatalogue(self.coordinator)

    def stopping(self) -> bool:
        """Whether the server is going down, so a cancelled handler was not the client's doing.

        uvicorn marks its `Server.should_exit` on SIGTERM/SIGINT, before it drains and then
        drops open connections, and a dropped 2026 response stream would otherwise read as
        the client cancelling. Its signal handler is a bound method of that Server.
        """
        handler = signal.getsignal(signal.SIGTERM)
        uvicorn_exiting = getattr(getattr(handler, "__self__", None), "should_exit", False)
        return self.stopped or uvicorn_exiting is True

    @property
    def inline_limit_secs(self) -> float:
        return min(self.settings.inline_wait_secs, self.settings.timeout_secs)

    def caller(self, ctx: ServerRequestContext[Any, Any]) -> Principal:
        request = ctx.request
        if request is None:
            return self.local_principal
        user = request.scope.get("user")
        if not isinstance(user, AuthenticatedPrincipal):
            # RequireAuthMiddleware lets no such request through; refuse rather than guess.
            raise Unauthorized("this request carries no skillq principal")
        principal = user.principal
        # As on REST: without a role a principal may do nothing with jobs.
        principal.require(VIEWER, "use the tools")
        return principal
