"""What a REST endpoint demands of its caller: a principal, and a role that allows the act.

    viewer     read its own jobs                              (scope skillq:read)
    submitter  also submit, cancel and retry its own jobs     (scope skillq:submit)
    admin      everything, on every owner's jobs              (scope skillq:admin)

A principal lacking the role gets 403 with `WWW-Authenticate: Bearer
error="insufficient_scope", scope="..."` naming the scope that would do (`skillq.api.scopes`).

Reads of other owners' jobs are not refused here but filtered by the coordinator
(`owner=principal.owner_filter`), so they answer 404 and ids cannot be probed.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection

from skillq.api.principal import ADMIN, SUBMITTER, VIEWER, AuthenticatedPrincipal, Principal
from skillq.errors import Unauthorized


def principal_of(conn: HTTPConnection) -> Principal:
    user = conn.user
    if isinstance(user, AuthenticatedPrincipal):
        return user.principal
    header = conn.app.state.settings.auth.api_key_header
    raise Unauthorized(f"authentication required: send 'Authorization: Bearer' or '{header}'")


def require_viewer(conn: HTTPConnection) -> Principal:
    principal = principal_of(conn)
    principal.require(VIEWER, "read jobs")
    return principal


def require_submitter(conn: HTTPConnection) -> Principal:
    principal = principal_of(conn)
    principal.require(SUBMITTER, "submit or change jobs")
    return principal


def require_admin(conn: HTTPConnection) -> Principal:
    principal = principal_of(conn)
    principal.require(ADMIN, "do this")
    return principal
