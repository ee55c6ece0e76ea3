"""Who is calling: the one identity type shared by REST, MCP and the CLI's token tools.

`request.user` is an `AuthenticatedPrincipal`, a subclass of the MCP SDK's
`AuthenticatedUser`, so the SDK's `RequireAuthMiddleware`, its per-session ownership check
and `get_access_token()` work unchanged on MCP routes, while REST handlers read
`request.user.principal`.
"""

from __future__ import annotations

from dataclasses import dataclass

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken

from skillq.api.scopes import (
    ADMIN,
    ROLES,
    SCOPE_OF_ROLE,
    SUBMITTER,
    VIEWER,
    grants,
    insufficient_scope,
)

__all__ = ["ADMIN", "LOCAL", "ROLES", "SUBMITTER", "VIEWER", "AuthenticatedPrincipal", "Principal"]


@dataclass(frozen=True)
class Principal:
    #: Owner of the jobs this principal submits (the JWT subject, API key name, or `local`).
    subject: str
    roles: frozenset[str]
    #: How it was authenticated: none, jwt, oidc or api_key.
    method: str

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.roles

    @property
    def can_submit(self) -> bool:
        return grants(self.roles, SUBMITTER)

    def require(self, role: str, doing: str) -> None:
        """Refuse (`insufficient_scope`, 403) unless this principal's roles allow `role`'s acts;
        `doing` says what it tried, for the message."""
        if not grants(self.roles, role):
            needs = f"needs role {role} or scope {SCOPE_OF_ROLE[role]}"
            raise insufficient_scope(f"{self.subject!r} may not {doing} ({needs})", role)

    @property
    def owner_filter(self) -> str | None:
        """The owner whose jobs this principal may see; None means every owner."""
        return None if self.is_admin else self.subject

    def data_owner(self, named: str | None) -> str:
        """Whose data (a search collection) a call acts on: the caller's own, or the owner
        it names, which only an admin may make another than itself. Refused whether or not
        that owner exists, so the answer tells nothing about other tenants."""
        if named is None or named == self.subject:
            return self.subject
        self.require(ADMIN, "name another owner")
        return named


#: Auth mode `none`: one local user who may do everything.
LOCAL = Principal(subject="local", roles=frozenset({ADMIN}), method="none")


class AuthenticatedPrincipal(AuthenticatedUser):
    def __init__(self, principal: Principal, token: str = "", expires_at: int | None = None):
        super().__init__(
            AccessToken(
                token=token,
                client_id=principal.subject,
                scopes=sorted(principal.roles),
                expires_at=expires_at,
                subject=principal.subject,
                claims={"method": principal.method},
            )
        )
        self.principal = principal
