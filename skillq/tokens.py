"""JWT checks for `auth.mode = "jwt"`, and minting tokens for local use.

The algorithm a token may use is decided by the key we hold, never by the token: a secret
allows HS256 only, an RSA public key RS256 only, an EC key the ES algorithm of its curve.
So `alg: none` and the HS256-signed-with-the-public-key confusion are refused before any
signature is computed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from skillq.settings import JwtSettings

#: Seconds of clock skew tolerated on `exp`, `nbf` and `iat`.
LEEWAY_SECS = 10
#: The claim carrying a token's roles (a list, or one space- or comma-separated string).
ROLES_CLAIM = "roles"

_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


class TokenError(Exception):
    """A token we refuse; the message is safe to show the client."""


def public_key_algorithm(key: Any) -> str:
    """The one signature algorithm a public key may verify."""
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _EC_ALGORITHMS:
        return _EC_ALGORITHMS[key.curve.name]
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    raise ValueError(f"unsupported public key type {type(key).__name__}")


def decode_claims(
    token: str,
    key: Any,
    algorithm: str,
    *,
    issuer: str | None,
    audience: str | None,
    extra_audiences: Sequence[str] = (),
) -> dict[str, Any]:
    """Verify signature, issuer, audience and times; map pyjwt's errors to plain reasons.
    The token's `aud` must name `audience` or one of `extra_audiences` (the server's own
    URLs, RFC 8707 resource indicators)."""
    audiences = [audience, *extra_audiences] if audience is not None else None
    try:
        return jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            issuer=issuer,
            audience=audiences,
            leeway=LEEWAY_SECS,
            options={"require": ["exp", "sub"]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("the token has expired") from None
    except jwt.ImmatureSignatureError:
        raise TokenError("the token is not valid yet") from None
    except jwt.InvalidIssuerError:
        raise TokenError("the token has the wrong issuer") from None
    except jwt.InvalidAudienceError:
        raise TokenError("the token has the wrong audience") from None
    except jwt.InvalidSignatureError:
        raise TokenError("the token's signature does not verify") from None
    except jwt.MissingRequiredClaimError as error:
        raise TokenError(f"the token has no {error.claim!r} claim") from None
    except jwt.InvalidTokenError as error:
        raise TokenError(f"the token is invalid: {error}") from None


def unverified_header(token: str) -> dict[str, Any]:
    try:
        return jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise TokenError("the token is not a well-formed JWT") from None


def roles_of(value: Any) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset(value.replace(",", " ").split())
    if isinstance(value, list):
        return frozenset(item for item in value if isinstance(item, str))
    return frozenset()


class JwtVerifier:
    """Checks Bearer tokens against the configured secret and/or public key."""

    def __init__(self, settings: JwtSettings) -> None:
        self.settings = settings
        self.keys: dict[str, Any] = {}
        if settings.secret:
            self.keys["HS256"] = settings.secret
        if settings.public_key:
            key = load_pem_public_key(settings.public_key.encode())
            self.keys[public_key_algorithm(key)] = key

    def verify(self, token: str, *, extra_audiences: Sequence[str] = ()) -> dict[str, Any]:
        algorithm = unverified_header(token).get("alg")
        key = self.keys.get(algorithm) if isinstance(algorithm, str) else None
        if key is None:
            accepted = ", ".join(self.keys)
            raise TokenError(f"the token's algorithm {algorithm!r} is not accepted ({accepted})")
        return decode_claims(
            token,
            key,
            algorithm,
            issuer=self.settings.issuer,
            audience=self.settings.audience,
            extra_audiences=extra_audiences,
        )


def mint_token(
    settings: JwtSettings, subject: str, roles: list[str], ttl_secs: float | None = None
) -> str:
    """An HS256 token this server accepts, for scripts and local use."""
    if not settings.secret:
        raise ValueError("auth.jwt.secret is not set; it is needed to sign tokens")
    now = int(time.time())
    ttl = settings.expiry_hours * 3600 if ttl_secs is None else ttl_secs
    claims = {
        "sub": subject,
        ROLES_CLAIM: roles,
        "iss": settings.issuer,
        "aud": settings.audience,
        "iat": now,
        "nbf": now,
        "exp": now + int(ttl),
    }
    return jwt.encode(claims, settings.secret, algorithm="HS256")
