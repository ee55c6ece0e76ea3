"""Dramatiq's hook dispatch, calling only the middleware that implement a hook.

Dramatiq's `Broker.emit_before` / `emit_after` look the hook up on every middleware and call
it, most of them `Middleware`'s own no-op: skillq's stack has 16 middleware, and a job's
submit, start, finish and ack emit about eight signals, so over a hundred calls per job did
nothing. `OverriddenHooks` keeps, per signal, the middleware whose hook is their own, in
order, and calls those alone; the same exceptions propagate or are logged as dramatiq's.
The lists are rebuilt whenever the middleware list is replaced or changes length
(`add_middleware` inserts into it).
"""

from __future__ import annotations

from typing import Any

from dramatiq.broker import Broker
from dramatiq.middleware import Middleware, MiddlewareError


def _is_overridden(middleware: object, hook: str) -> bool:
    """Whether `middleware`'s `hook` may do anything: anything but `Middleware`'s own no-op.
    A middleware not derived from `Middleware`, or without the hook, is called as dramatiq
    would (and the failure logged as dramatiq's)."""
    if not isinstance(middleware, Middleware):
        return True
    method = getattr(middleware, hook, None)
    if method is None:
        return True
    return getattr(method, "__func__", None) is not getattr(Middleware, hook, None)


class OverriddenHooks(Broker):
    """A broker mixin (first among the bases) for `emit_before` / `emit_after`."""

    _hooks: dict[str, list[object]]
    #: The middleware list (identity, length) that `_hooks` was built from.
    _hooks_of: tuple[int, int] = (0, 0)

    def _overriding(self, hook: str) -> list[object]:
        """The middleware, in list order, whose `hook` is their own."""
        middleware = self.middleware
        key = (id(middleware), len(middleware))
        if self._hooks_of != key:
            self._hooks = {}
            self._hooks_of = key
        found = self._hooks.get(hook)
        if found is None:
            found = self._hooks[hook] = [m for m in middleware if _is_overridden(m, hook)]
        return found

    def emit_before(self, signal: str, *args: Any, **kwargs: Any) -> None:
        hook = "before_" + signal
        for middleware in self._overriding(hook):
            try:
                getattr(middleware, hook)(self, *args, **kwargs)
            except MiddlewareError:
                raise
            except Exception:
                self.logger.critical(
                    "Unexpected failure in %s of %r.", hook, middleware, exc_info=True
                )

    def emit_after(self, signal: str, *args: Any, **kwargs: Any) -> None:
        hook = "after_" + signal
        for middleware in reversed(self._overriding(hook)):
            try:
                getattr(middleware, hook)(self, *args, **kwargs)
            except Exception:
                self.logger.critical(
                    "Unexpected failure in %s of %r.", hook, middleware, exc_info=True
                )
