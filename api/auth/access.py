"""What a REST endpoint demands of its caller: a principal, and a role that allows the act.

    viewer     read its own jobs
    submitter  also submit, cancel and retry its own jobs
    admin      everything, on every owner's jobs

Reads of other owners' jobs are not refused here but filtered by the coordinator
(`owner=principal.owner_filter`), so they answer 404 and ids cannot be probed.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection

from skillq.api.principal import ROLES, AuthenticatedPrincipal, Principal
from skillq.errors import Forbidden, Unauthorized


def principal_of(conn: HTTPConnection) -> Principal:
    user = conn.user
    if isinstance(user, AuthenticatedPrincipal):
        return user.principal
    header = conn.app.state.settings.auth.api_key_header
    raise Unauthorized(f"authentication required: send 'Authorization: Bearer' or '{header}'")


def require_viewer(conn: HTTPConnection) -> Principal:
    principal = principal_of(conn)
    if not principal.roles & set(ROLES):
        raise Forbidden(f"{principal.subject!r} has no role (needs one of {', '.join(ROLES)})")
    return principal


def require_submitter(conn: HTTPConnection) -> Principal:
    principal = principal_of(conn)
    if not principal.can_submit:
        raise Forbidden(f"{principal.subject!r} may not submit or change jobs (needs submitter)")
    return principal


def require_admin(conn: HTTPConnection) -> Principal:
    principal = principal_of(conn)
    if not principal.is_admin:
        raise Forbidden(f"{principal.subject!r} may not do this (needs admin)")
    return principal
