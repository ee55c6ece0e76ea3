"""The authentication backend shared by REST and MCP: who is calling, from which credential.

    auth.mode = none   every request is the local admin (`LOCAL`)
    auth.mode = jwt    `Authorization: Bearer <JWT>` checked with the configured key
    auth.mode = oidc   `Authorization: Bearer <JWT>` checked against the provider's JWKS
    (jwt, oidc)        an API key in `auth.api_key_header`, or as `Bearer skq_...`
    (any mode)         `Bearer skqw_...`, a worker token, is left to the worker routes

A token's roles are its roles claim plus what its `scope`/`scp` claims grant
(`skillq.api.scopes`); its audience may be `auth.*.audience` or this server's canonical URL
(`skillq.api.protected_resource`, RFC 8707). The OAuth metadata routes are open to anyone:
a stale credential sent to them is ignored, not refused.

No credential at all leaves `request.user` unauthenticated, so open routes (probes) still
work and protected ones answer 401 themselves; a credential that is present but wrong is
refused here with 401 (or 503 when the identity provider or the key store cannot be reached).
"""

from __future__ import annotations

import time
from typing import Any

from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    AuthenticationError,
    BaseUser,
)
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection
from starlette.responses import Response

from skillq.api.auth.oidc import OidcVerifier, ProviderUnavailable
from skillq.api.errors import error_response
from skillq.api.principal import LOCAL, AuthenticatedPrincipal, Principal
from skillq.api.protected_resource import METADATA_PATH, ProtectedResource
from skillq.api.scopes import roles_from_scopes
from skillq.errors import ServiceUnavailable, Unauthorized
from skillq.settings import Settings
from skillq.storage import api_keys, worker_tokens
from skillq.storage.database import STORE_OUTAGES, connection
from skillq.tokens import LEEWAY_SECS, ROLES_CLAIM, JwtVerifier, TokenError, roles_of

_MAX_CACHED_KEYS = 10_000


class InvalidCredentials(AuthenticationError):
    """A credential was sent and is wrong: 401."""


class CannotCheckCredentials(AuthenticationError):
    """The OIDC provider or the API key store could not be asked: 503, the client may retry."""


class SkillqAuthBackend(AuthenticationBackend):
    def __init__(self, settings: Settings, resource: ProtectedResource) -> None:
        self.resource = resource
        self.mode = settings.auth.mode
        self.key_header = settings.auth.api_key_header
        self.oidc_settings = settings.auth.oidc
        self.jwt = JwtVerifier(settings.auth.jwt) if self.mode == "jwt" else None
        self.oidc = OidcVerifier(settings.auth.oidc) if self.mode == "oidc" else None
        self.key_cache_secs = settings.auth.api_key_cache_secs
        #: digest -> (when checked, principal): keys checked recently skip the store.
        self._keys: dict[str, tuple[float, Principal]] = {}
        #: (token, audiences) -> (principal, exp): verified tokens, until they expire.
        self._tokens: dict[tuple[str, tuple[str, ...]], tuple[Principal, int | None]] = {}
        self._local = (AuthCredentials(sorted(LOCAL.roles)), AuthenticatedPrincipal(LOCAL))

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        if self.mode == "none":
            return self._local
        if conn.url.path.startswith(METADATA_PATH):
            return None
        key = conn.headers.get(self.key_header)
        token = None
        if key is None and (authorization := conn.headers.get("authorization")) is not None:
            scheme, _, credential = authorization.strip().partition(" ")
            credential = credential.strip()
            if scheme.lower() != "bearer" or not credential:
                raise InvalidCredentials("the Authorization header must be 'Bearer <token>'")
            if credential.startswith(worker_tokens.TOKEN_PREFIX):
                # A worker token is no user: the worker routes check it themselves.
                return None
            if credential.startswith(api_keys.KEY_PREFIX):
                key = credential
            else:
                token = credential
        if key is not None:
            principal = await self._api_key_principal(key)
            user = AuthenticatedPrincipal(principal, token=f"api-key:{principal.subject}")
        elif token is not None:
            audiences = self.resource.audiences(conn)
            principal, expires_at = await self._token_principal(token, audiences)
            user = AuthenticatedPrincipal(principal, token=token, expires_at=expires_at)
        else:
            return None
        return AuthCredentials(sorted(principal.roles)), user

    async def _api_key_principal(self, key: str) -> Principal:
        """A store lookup (in the thread pool) costs ~0.3 ms; a recent check costs nothing,
        at the price of a revocation taking up to `auth.api_key_cache_secs` to apply."""
        digest = api_keys.digest_of(key)
        now = time.monotonic()
        cached = self._keys.get(digest)
        if cached is not None and now - cached[0] < self.key_cache_secs:
            return cached[1]
        try:
            row = await run_in_threadpool(_find_key, key)
        except STORE_OUTAGES:
            raise CannotCheckCredentials("the API key store is unavailable") from None
        if row is None:
            self._keys.pop(digest, None)
            raise InvalidCredentials("the API key is unknown or revoked")
        principal = Principal(subject=row.name, roles=frozenset({row.role}), method="api_key")
        if self.key_cache_secs > 0:
            if len(self._keys) >= _MAX_CACHED_KEYS:
                self._keys.clear()
            self._keys[digest] = (now, principal)
        return principal

    async def _token_principal(
        self, token: str, audiences: tuple[str, ...]
    ) -> tuple[Principal, int | None]:
        """Verifying a signature costs ~0.1 ms, so a verified token is remembered until it
        expires (`exp` is required), per set of audiences it was checked against (they vary
        with Host when no public URL is set); a token refused once is checked every time."""
        cache_key = (token, audiences)
        cached = self._tokens.get(cache_key)
        if cached is not None:
            expires_at = cached[1]
            if expires_at is not None and time.time() <= expires_at + LEEWAY_SECS:
                return cached
            self._tokens.pop(cache_key, None)
        principal, expires_at = await self._verify_token(token, audiences)
        if expires_at is not None:
            if len(self._tokens) >= _MAX_CACHED_KEYS:
                self._tokens.clear()
            self._tokens[cache_key] = (principal, expires_at)
        return principal, expires_at

    async def _verify_token(
        self, token: str, audiences: tuple[str, ...]
    ) -> tuple[Principal, int | None]:
        try:
            if self.jwt is not None:
                claims = self.jwt.verify(token, extra_audiences=audiences)
                subject, roles, method = claims["sub"], claims.get(ROLES_CLAIM), "jwt"
            else:
                assert self.oidc is not None
                claims = await self.oidc.verify(token, extra_audiences=audiences)
                subject = claims.get(self.oidc_settings.user_claim)
                roles, method = claims.get(self.oidc_settings.roles_claim), "oidc"
        except TokenError as error:
            raise InvalidCredentials(str(error)) from None
        except ProviderUnavailable as error:
            raise CannotCheckCredentials(f"the identity provider is unavailable: {error}") from None
        if not isinstance(subject, str) or not subject:
            raise InvalidCredentials("the token names no user")
        granted = roles_of(roles) | roles_from_scopes(claims)
        principal = Principal(subject=subject, roles=granted, method=method)
        expires_at = claims.get("exp")
        return principal, int(expires_at) if isinstance(expires_at, int | float) else None


def _find_key(key: str) -> Any:
    with connection():
        return api_keys.find_active(key)


def build_auth_backend(
    settings: Settings, resource: ProtectedResource | None = None
) -> AuthenticationBackend:
    """The backend for `AuthenticationMiddleware(app, backend=..., on_error=on_auth_error)`;
    `resource` (the app's) says which canonical URLs count as a token's audience."""
    return SkillqAuthBackend(settings, resource or ProtectedResource(settings))


def on_auth_error(conn: HTTPConnection, error: Exception) -> Response:
    """401 (or 503) in the error envelope; a 401 says why in its `WWW-Authenticate`
    (`error="invalid_token"`: a credential was sent and is wrong) and where to get a token."""
    if isinstance(error, CannotCheckCredentials):
        return error_response(ServiceUnavailable(str(error)), headers={"Retry-After": "5"})
    message = str(error)
    resource: ProtectedResource = conn.app.state.protected_resource
    challenge = resource.challenge(conn, error="invalid_token", description=message)
    return error_response(Unauthorized(message), headers={"WWW-Authenticate": challenge})
