"""The server-side request forgery guard for webhook URLs.

A webhook makes skillq send requests to a URL a client chose, so by default only http(s)
URLs to public addresses are allowed: every address the host resolves to is checked (one
private address among public ones refuses the URL), and the request is then made to the
checked address itself, so a DNS answer that changes between the check and the connection
(DNS rebinding) cannot point it elsewhere. Redirects are never followed (`delivery`).
`[webhooks] allow_private = true` lifts the address check (tests, a single machine); the
scheme and form checks stay.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

MAX_URL_LENGTH = 2000
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class UrlRefused(ValueError):
    """A webhook URL that must not be called; the message says why."""


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect, and what to call the host (Host header, TLS name)."""

    url: SplitResult
    host: str
    port: int
    addresses: tuple[str, ...]


def parse_url(url: str) -> tuple[SplitResult, str, int]:
    """The URL's parts, host and port, or UrlRefused for anything but a plain http(s) URL."""
    if len(url) > MAX_URL_LENGTH:
        raise UrlRefused(f"longer than {MAX_URL_LENGTH} characters")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise UrlRefused("contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise UrlRefused(f"not a valid URL ({error})") from None
    if parts.scheme not in ("http", "https"):
        raise UrlRefused(f"scheme must be http or https (got {parts.scheme or 'none'!r})")
    if not parts.hostname:
        raise UrlRefused("has no host")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("must not carry a user name or password")
    default = 443 if parts.scheme == "https" else 80
    return parts, parts.hostname, port or default


def refused_reason(address: _Address) -> str | None:
    """Why an address may not be called without `allow_private`, or None if it is public."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return refused_reason(address.ipv4_mapped)
    checks = [
        ("a loopback address", address.is_loopback),
        ("a private address", address.is_private),
        ("a link-local address", address.is_link_local),
        ("a multicast address", address.is_multicast),
        ("a reserved address", address.is_reserved),
        ("the unspecified address", address.is_unspecified),
        ("not a globally routable address", not address.is_global),
    ]
    return next((name for name, hit in checks if hit), None)


def resolve(host: str, port: int) -> list[_Address]:
    """Every address `host` resolves to (an IP literal is itself)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as error:
        raise UrlRefused(f"host {host!r} does not resolve ({error})") from None
    # An IPv6 answer may carry a scope ("fe80::1%eth0"); the scope is not part of the address.
    addresses = {ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos}
    if not addresses:
        raise UrlRefused(f"host {host!r} does not resolve")
    return sorted(addresses, key=lambda a: (a.version, int(a)))


def check_url(url: str, *, allow_private: bool) -> Target:
    """The URL checked and resolved: UrlRefused unless it is an http(s) URL whose host
    resolves only to addresses the guard allows."""
    parts, host, port = parse_url(url)
    addresses = resolve(host, port)
    if not allow_private:
        for address in addresses:
            reason = refused_reason(address)
            if reason is not None:
                raise UrlRefused(
                    f"host {host!r} is refused: {address} is a {reason} address"
                    " (set [webhooks] allow_private = true to allow it)"
                )
    return Target(parts, host, port, tuple(str(a) for a in addresses))
