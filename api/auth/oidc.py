"""Tokens from an OpenID Connect provider: discovery, then JWKS, cached.

The discovery document and the key set are fetched on first use, not at start-up, so the
API starts while the provider is down (requests then get 503). A token naming a key id we
do not hold triggers one JWKS refresh, at most once per `jwks_min_refresh_secs`, so a flood
of made-up key ids cannot turn into a flood of requests to the provider; after a provider
rotates its keys, the first token with the new key id fetches them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import jwt

from skillq.settings import OidcSettings
from skillq.tokens import TokenError, decode_claims, unverified_header

#: Key sets older than this are fetched again on next use, even without an unknown key id.
JWKS_MAX_AGE_SECS = 3600
_ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "ES512", "EdDSA"})


class ProviderUnavailable(Exception):
    """The provider could not be asked (network, HTTP error, or a malformed document)."""


class OidcVerifier:
    def __init__(
        self,
        settings: OidcSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        timeout_secs: float = 5.0,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.timeout_secs = timeout_secs
        self.issuer: str | None = None
        self.jwks_uri: str | None = None
        self.keys: dict[str | None, jwt.PyJWK] = {}
        self.fetched_at: float | None = None
        self.fetches = 0
        self._lock = asyncio.Lock()

    async def verify(self, token: str, *, extra_audiences: Sequence[str] = ()) -> dict[str, Any]:
        header = unverified_header(token)
        algorithm = header.get("alg")
        if algorithm not in _ASYMMETRIC:
            raise TokenError(f"the token's algorithm {algorithm!r} is not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenError("the token's key id is not a string")
        key = await self._key(kid)
        if key.algorithm_name != algorithm:
            raise TokenError(f"the signing key is for {key.algorithm_name}, not {algorithm}")
        return decode_claims(
            token,
            key.key,
            algorithm,
            issuer=self.issuer,
            audience=self.settings.audience,
            extra_audiences=extra_audiences,
        )

    async def _key(self, kid: str | None) -> jwt.PyJWK:
        async with self._lock:
            stale = self.fetched_at is None or self.clock() - self.fetched_at > JWKS_MAX_AGE_SECS
            if stale or (kid not in self.keys and self._may_refresh()):
                await self._refresh()
        if kid is None and len(self.keys) == 1:
            return next(iter(self.keys.values()))
        key = self.keys.get(kid)
        if key is None:
            raise TokenError(f"the token's signing key {kid!r} is not one of the provider's")
        return key

    def _may_refresh(self) -> bool:
        assert self.fetched_at is not None
        return self.clock() - self.fetched_at >= self.settings.jwks_min_refresh_secs

    async def _refresh(self) -> None:
        async with httpx.AsyncClient(timeout=self.timeout_secs) as client:
            if self.jwks_uri is None:
                base = (self.settings.provider_url or "").rstrip("/")
                config = await _get_json(client, f"{base}/.well-known/openid-configuration")
                if not isinstance(config.get("jwks_uri"), str):
                    raise ProviderUnavailable("the discovery document has no jwks_uri")
                if not isinstance(config.get("issuer"), str):
                    raise ProviderUnavailable("the discovery document has no issuer")
                self.issuer, self.jwks_uri = config["issuer"], config["jwks_uri"]
            document = await _get_json(client, self.jwks_uri)
        self.fetches += 1
        self.fetched_at = self.clock()
        keys: dict[str | None, jwt.PyJWK] = {}
        for entry in document.get("keys") or []:
            if entry.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(entry)
            except jwt.PyJWTError:
                continue  # a key type we cannot use; others in the set may still serve
            if key.algorithm_name in _ASYMMETRIC:
                keys[entry.get("kid")] = key
        self.keys = keys


async def _get_json(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    try:
        response = await client.get(url)
        response.raise_for_status()
        document = response.json()
    except (httpx.HTTPError, ValueError) as error:
        raise ProviderUnavailable(f"cannot read {url}: {error}") from None
    if not isinstance(document, dict):
        raise ProviderUnavailable(f"{url} did not return a JSON object")
    return document
