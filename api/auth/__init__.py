"""Authentication and authorization for REST and MCP.

`build_auth_backend(settings)` is the Starlette authentication backend both use; the
functions in `api.auth.access` are what a REST endpoint calls to demand a role.
"""

from skillq.api.auth.backend import build_auth_backend, on_auth_error

__all__ = ["build_auth_backend", "on_auth_error"]
