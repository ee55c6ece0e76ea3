"""A small real OpenID Connect provider for tests: an http.server on 127.0.0.1 serving
discovery (`/.well-known/openid-configuration`, and the same document as OAuth
authorization server metadata), a JWKS of keys the test generates (and rotates), dynamic
client registration, and a token endpoint that signs a token for the `resource` the client
asked for (RFC 8707), so an OAuth client's whole flow runs over real HTTP.

It has no login page: `/authorize` is only ever a URL the client hands its redirect handler,
and the test plays the user by handing back a code.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support import JsonHandler, serve_http

AUDIENCE = "skillq-api"


class Provider:
    """Discovery + JWKS; `keys` maps kid -> private key, and only those are published.
    `registered` and `token_requests` record what clients sent."""

    def __init__(self) -> None:
        self.keys: dict[str, object] = {}
        self.jwks_fetches = 0
        self.up = True
        self.registered: list[dict] = []
        self.token_requests: list[dict[str, str]] = []
        provider = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:
                if not provider.up:
                    self.send_error(503)
                    return
                discovery = (
                    "/.well-known/openid-configuration",
                    "/.well-known/oauth-authorization-server",
                )
                if self.path in discovery:
                    body = provider.metadata()
                elif self.path == "/jwks":
                    provider.jwks_fetches += 1
                    body = {"keys": [provider.jwk(kid) for kid in list(provider.keys)]}
                else:
                    self.send_error(404)
                    return
                self.send_json(body)

            def do_POST(self) -> None:
                if self.path == "/register":
                    request = self.read_json()
                    provider.registered.append(request)
                    self.send_json({**request, "client_id": f"client-{uuid.uuid4().hex[:8]}"})
                elif self.path == "/token":
                    length = int(self.headers["Content-Length"])
                    form = parse_qs(self.rfile.read(length).decode())
                    fields = {name: values[0] for name, values in form.items()}
                    provider.token_requests.append(fields)
                    self.send_json(provider.token_response(fields))
                else:
                    self.send_error(404)

        self._server = contextlib.ExitStack()
        self.issuer = self._server.enter_context(serve_http(Handler))

    def metadata(self) -> dict:
        return {
            "issuer": self.issuer,
            "jwks_uri": f"{self.issuer}/jwks",
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "registration_endpoint": f"{self.issuer}/register",
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none"],
        }

    def jwk(self, kid: str) -> dict:
        key = self.keys[kid]
        algorithm = (
            jwt.algorithms.RSAAlgorithm
            if isinstance(key, rsa.RSAPrivateKey)
            else (jwt.algorithms.ECAlgorithm)
        )
        jwk = json.loads(algorithm.to_jwk(key.public_key()))
        return {**jwk, "kid": kid, "use": "sig"}

    def add_key(self, kid: str, kind: str = "rsa") -> None:
        self.keys[kid] = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            if kind == "rsa"
            else ec.generate_private_key(ec.SECP256R1())
        )

    def token(self, kid: str, **overrides: object) -> str:
        """A token for ada; an override of None drops that claim."""
        now = int(time.time())
        claims = {
            "sub": "user-1",
            "email": "ada@example.com",
            "groups": ["submitter", "staff"],
            "iss": self.issuer,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 600,
            **overrides,
        }
        claims = {name: value for name, value in claims.items() if value is not None}
        key = self.keys[kid]
        algorithm = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
        return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid})

    def token_response(self, fields: dict[str, str]) -> dict:
        """What a real provider does with an authorization code: a token for the resource
        the client named, with the scopes it asked for (no groups: the scopes must do)."""
        access = self.token(
            next(iter(self.keys)),
            aud=fields.get("resource", AUDIENCE),
            groups=None,
            scope=self.last_scope,
        )
        return {"access_token": access, "token_type": "Bearer", "expires_in": 600}

    #: The scope the last authorization URL asked for (the test sets it, playing the user).
    last_scope = ""

    def close(self) -> None:
        self._server.close()
