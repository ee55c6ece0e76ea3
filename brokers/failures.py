"""The exceptions of recently dead-lettered messages, for `join(fail_fast=True)` to re-raise.

`join` is Dramatiq's test helper (`StubBroker` re-raises a dead letter's exception); our brokers
keep their dead letters in the database, but an exception object lives only in the process
that caught it. So each broker keeps the latest few here, and only as type and arguments,
from which `join` builds the exception again when it raises. Dramatiq clears a message's
exception after processing so that it and its frames die at once (its
`test_exception_from_actor_doesnt_leak` counts every instance ever made of the actor's
exception class): keeping the exception, or even a copy of it, would break that promise.
The bound keeps a long-running worker's memory flat.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

#: How many dead letters' exceptions a broker remembers.
REMEMBERED = 100


class RecentFailures:
    """Bounded, thread-safe map from a dead letter's row id to its exception's type and args."""

    def __init__(self, size: int = REMEMBERED) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._by_key: OrderedDict[object, tuple[type[BaseException], tuple]] = OrderedDict()

    def remember(self, key: object, exception: BaseException | None) -> None:
        if exception is None:
            return
        with self._lock:
            self._by_key[key] = (type(exception), exception.args)
            while len(self._by_key) > self.size:
                self._by_key.popitem(last=False)

    def get(self, key: object) -> BaseException | None:
        """The exception built again, or a plain `Exception` saying what it was."""
        with self._lock:
            remembered = self._by_key.get(key)
        if remembered is None:
            return None
        kind, args = remembered
        try:
            return kind(*args)
        except Exception:  # an exception class whose __init__ takes other arguments
            return Exception(f"{kind.__qualname__}{args!r}")

    def clear(self) -> None:
        with self._lock:
            self._by_key.clear()
