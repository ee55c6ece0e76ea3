"""uvicorn's HTTP protocol with the two bounds it lacks: a cap on open connections and a
deadline for each request's headers.

uvicorn (0.54) keeps a connection that never sends a request open forever, and its
keep-alive timer stops at the first byte of the next request, so a client trickling header
bytes (slowloris) is never closed either; every such socket holds a file descriptor, and
enough of them leave none for anyone else. Here:

- a connection made while `limit_concurrency` connections are open is closed at once (the
  same number uvicorn uses to answer requests 503), so descriptors stay bounded;
- a connection must deliver a complete request head within `timeout_keep_alive` seconds of
  opening, and again of each response it got; otherwise it is closed.

`skillq api` selects this protocol (`http="skillq.api.connection_limits:BoundedHttpProtocol"`);
it builds on httptools when installed, as uvicorn's own "auto" does, else on h11.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:  # pragma: no cover - httptools is a dependency, but optional for uvicorn
    _Base = H11Protocol  # type: ignore[assignment, misc]


class BoundedHttpProtocol(_Base):  # type: ignore[misc, valid-type]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        full = (
            self.limit_concurrency is not None and len(self.connections) >= self.limit_concurrency
        )
        super().connection_made(transport)
        if full:
            transport.close()
            return
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._await_head()

    def _await_head(self) -> None:
        """Close the connection unless a request head arrives (a new cycle starts) in time."""
        self._cancel_deadline()
        if self.transport.is_closing():
            return
        waiting_since = self.cycle
        self._head_deadline = self.loop.call_later(
            self.timeout_keep_alive, self._head_overdue, waiting_since
        )

    def _head_overdue(self, waiting_since: object) -> None:
        self._head_deadline = None
        idle = self.cycle is None or self.cycle.response_complete
        if self.cycle is waiting_since and idle and not self.transport.is_closing():
            self.transport.close()

    def _cancel_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None
