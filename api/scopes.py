"""Roles, and the OAuth scopes that grant them.

    role        scope           may
    viewer      skillq:read     read its own jobs
    submitter   skillq:submit   also submit, cancel and retry its own jobs
    admin       skillq:admin    everything, on every owner's jobs

A token's roles are the union of its roles claim and the roles its scopes grant (`scope`, a
space-separated string, or `scp`, a list or a string), so a plain OAuth client that asks its
authorization server for `skillq:submit` gets what a `submitter` role gives. Other scopes
(`openid`, `email`, ...) grant nothing.

A caller without the role an act needs gets `insufficient_scope(...)`: 403 `forbidden` whose
details name the scope that would do; on HTTP the challenge names it too (RFC 6750
`error="insufficient_scope"`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from skillq.errors import Forbidden

#: Roles, from most to least powerful.
ADMIN, SUBMITTER, VIEWER = "admin", "submitter", "viewer"
ROLES = (ADMIN, SUBMITTER, VIEWER)

READ_SCOPE, SUBMIT_SCOPE, ADMIN_SCOPE = "skillq:read", "skillq:submit", "skillq:admin"
SCOPE_OF_ROLE = {VIEWER: READ_SCOPE, SUBMITTER: SUBMIT_SCOPE, ADMIN: ADMIN_SCOPE}
ROLE_OF_SCOPE = {scope: role for role, scope in SCOPE_OF_ROLE.items()}
#: What `scopes_supported` publishes, least powerful first.
SCOPES = (READ_SCOPE, SUBMIT_SCOPE, ADMIN_SCOPE)
#: The scopes a client is asked for when it has no credentials: enough to read and submit,
#: which is what the MCP tools are for; admin is asked for by a 403 when an act needs it.
DEFAULT_SCOPES = (READ_SCOPE, SUBMIT_SCOPE)


def insufficient_scope(message: str, role: str) -> Forbidden:
    """A refusal for a missing role: 403 `forbidden` (the code clients already know), whose
    details name the scope that would do, `[{"path": "scope", "message": "skillq:submit"}]`;
    on HTTP the RFC 6750 challenge is built from them (`needed_scope`)."""
    return Forbidden(message, [{"path": "scope", "message": SCOPE_OF_ROLE[role]}])


def needed_scope(error: Exception) -> str | None:
    """The scope a `Forbidden` from `insufficient_scope` names; None for other refusals."""
    if not isinstance(error, Forbidden) or not isinstance(error.details, list):
        return None
    for detail in error.details:
        if isinstance(detail, dict) and detail.get("path") == "scope":
            scope = detail.get("message")
            return scope if scope in ROLE_OF_SCOPE else None
    return None


def scope_words(value: Any) -> list[str]:
    """`scope` is one space-separated string (RFC 8693 / 9068); `scp` is often a list."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [word for item in value if isinstance(item, str) for word in item.split()]
    return []


def roles_from_scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    """The roles a token's `scope` and `scp` claims grant."""
    words = scope_words(claims.get("scope")) + scope_words(claims.get("scp"))
    return frozenset(ROLE_OF_SCOPE[word] for word in words if word in ROLE_OF_SCOPE)


def grants(roles: frozenset[str], role: str) -> bool:
    """Whether `roles` allow what `role` allows: admin > submitter > viewer."""
    if role == VIEWER:
        return bool(roles & set(ROLES))
    if role == SUBMITTER:
        return bool(roles & {ADMIN, SUBMITTER})
    return ADMIN in roles
