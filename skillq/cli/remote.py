"""`--url` mode: the job commands talk to a skillq server through `skillq.client`.

Without `--url` (or `SKILLQ_URL`) they use the store named by the settings, as the local
admin. With it they act as whoever `--api-key` / `--token` names, under the server's rules.
The client raises skillq's own errors, so the exit statuses are those of the local mode;
this module only makes the two errors a person meets first name their fix: a server that
cannot be reached names the URL and where it came from, a 401 names the credential that is
missing or was refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer

from skillq.errors import InvalidRequest, ServiceUnavailable, Unauthorized

if TYPE_CHECKING:
    from skillq.client import Client

URL_ENV = "SKILLQ_URL"
API_KEY_ENV = "SKILLQ_API_KEY"
TOKEN_ENV = "SKILLQ_TOKEN"

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar=URL_ENV,
        help="Talk to the skillq server at this URL instead of the store.",
        show_envvar=True,
    ),
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option("--api-key", envvar=API_KEY_ENV, help="API key (with --url).", show_envvar=True),
]
TokenOption = Annotated[
    str | None,
    typer.Option("--token", envvar=TOKEN_ENV, help="Bearer token (with --url).", show_envvar=True),
]


@dataclass(frozen=True)
class Server:
    """Where `--url` points and with which credential."""

    url: str
    api_key: str | None = None
    token: str | None = None

    @property
    def credential(self) -> str:
        if self.api_key is not None:
            return f"the API key from --api-key / {API_KEY_ENV}"
        if self.token is not None:
            return f"the token from --token / {TOKEN_ENV}"
        return "no credential"

    @contextmanager
    def client(self) -> Iterator[Client]:
        """A `skillq.client.Client`, its errors reworded to name their fix."""
        import httpx

        from skillq.client import Client

        if self.api_key is not None and self.token is not None:
            raise InvalidRequest(
                f"give --api-key ({API_KEY_ENV}) or --token ({TOKEN_ENV}), not both"
            )
        not_a_url = f"--url / {URL_ENV} is not a URL ({self.url!r})"
        try:
            client = Client(self.url, api_key=self.api_key, token=self.token, retries=1)
        except httpx.InvalidURL as error:
            raise InvalidRequest(f"{not_a_url}: {error}") from None
        try:
            with client:
                yield client
        except httpx.InvalidURL as error:
            raise InvalidRequest(f"{not_a_url}: {error}") from None
        except httpx.TransportError as error:
            unreachable = ServiceUnavailable(
                f"cannot reach the skillq server at {self.url} (from --url / {URL_ENV}): "
                f"{error or type(error).__name__}; check the URL and that `skillq api` runs there"
            )
            unreachable.remote = True  # type: ignore[attr-defined]
            raise unreachable from None
        except ServiceUnavailable as error:
            error.remote = True  # type: ignore[attr-defined]  # the server's store, not ours
            raise
        except Unauthorized as error:
            if self.api_key is None and self.token is None:
                fix = (
                    f"the server at {self.url} needs a credential: pass --api-key "
                    f"(or set {API_KEY_ENV}) or --token (or set {TOKEN_ENV})"
                )
            else:
                fix = f"the server at {self.url} refused {self.credential}"
            raise Unauthorized(f"{fix} ({error.message})", error.details) from None


def server_of(url: str | None, api_key: str | None, token: str | None) -> Server | None:
    """The server to talk to, or None for the local store (where credentials mean nothing:
    the CLI beside the store is its admin)."""
    if not url:
        return None
    return Server(url.rstrip("/"), api_key or None, token or None)
