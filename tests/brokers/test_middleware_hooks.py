"""`OverriddenHooks` calls exactly the middleware dramatiq's dispatch would have had work for,
in the same order, with the same errors, and sees middleware added later."""

from __future__ import annotations

import logging

import pytest
from dramatiq.broker import Broker
from dramatiq.brokers.stub import StubBroker
from dramatiq.message import Message
from dramatiq.middleware import Middleware, SkipMessage

from skillq.brokers.middleware_hooks import OverriddenHooks
from skillq.brokers.rabbitmq_delays import DelayPromptRabbitmqBroker
from skillq.brokers.redis_priority import PriorityRedisBroker
from skillq.brokers.sqlite import SQLiteBroker


class HookedStub(OverriddenHooks, StubBroker):
    pass


class Recorder(Middleware):
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name
        self.calls = calls

    def before_ack(self, broker: Broker, message: Message) -> None:
        self.calls.append(f"{self.name}.before_ack")

    def after_ack(self, broker: Broker, message: Message) -> None:
        self.calls.append(f"{self.name}.after_ack")


class AfterOnly(Recorder):
    before_ack = Middleware.before_ack  # back to the no-op


class Silent(Middleware):
    """Implements nothing."""


class Failing(Middleware):
    def before_ack(self, broker: Broker, message: Message) -> None:
        raise RuntimeError("boom")


class Skipping(Middleware):
    def before_ack(self, broker: Broker, message: Message) -> None:
        raise SkipMessage()


def message() -> Message:
    return Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={})


def emit_ack(broker: Broker, dispatch: type[Broker]) -> None:
    dispatch.emit_before(broker, "ack", message())
    dispatch.emit_after(broker, "ack", message())


def test_skillq_brokers_dispatch_with_it() -> None:
    for broker_class in (SQLiteBroker, PriorityRedisBroker, DelayPromptRabbitmqBroker):
        assert broker_class.emit_before is not Broker.emit_before
        assert issubclass(broker_class, OverriddenHooks)


def test_same_calls_in_the_same_order_as_dramatiqs_dispatch() -> None:
    calls: list[str] = []
    broker = HookedStub(middleware=[])
    for middleware in (Recorder("a", calls), Silent(), AfterOnly("b", calls), Recorder("c", calls)):
        broker.add_middleware(middleware)
    emit_ack(broker, Broker)
    theirs = list(calls)
    calls.clear()
    emit_ack(broker, HookedStub)
    assert calls == theirs
    assert calls == [
        "a.before_ack",
        "c.before_ack",
        "c.after_ack",
        "b.after_ack",
        "a.after_ack",
    ]
    broker.close()


def test_middleware_added_after_a_dispatch_is_called() -> None:
    calls: list[str] = []
    broker = HookedStub(middleware=[])
    broker.add_middleware(Recorder("a", calls))
    emit_ack(broker, HookedStub)
    broker.add_middleware(Recorder("first", calls), before=Recorder)
    broker.middleware.append(Recorder("appended", calls))  # not through add_middleware
    calls.clear()
    emit_ack(broker, HookedStub)
    assert calls == [
        "first.before_ack",
        "a.before_ack",
        "appended.before_ack",
        "appended.after_ack",
        "a.after_ack",
        "first.after_ack",
    ]
    broker.close()


def test_a_failing_hook_is_logged_and_the_rest_still_run(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []
    broker = HookedStub(middleware=[])
    broker.add_middleware(Failing())
    broker.add_middleware(Recorder("a", calls))
    with caplog.at_level(logging.CRITICAL):
        broker.emit_before("ack", message())
    assert calls == ["a.before_ack"]
    assert "Unexpected failure in before_ack" in caplog.text
    broker.close()


def test_skip_message_propagates_and_stops_the_chain() -> None:
    calls: list[str] = []
    broker = HookedStub(middleware=[])
    broker.add_middleware(Skipping())
    broker.add_middleware(Recorder("a", calls))
    with pytest.raises(SkipMessage):
        broker.emit_before("ack", message())
    assert calls == []
    broker.close()


def test_an_object_that_is_no_middleware_is_called_as_dramatiq_would(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []

    class Duck:
        def before_ack(self, broker: Broker, message: Message) -> None:
            calls.append("duck")

    broker = HookedStub(middleware=[])
    broker.middleware.append(Duck())
    broker.middleware.append(object())  # no hook at all: dramatiq logs the AttributeError
    with caplog.at_level(logging.CRITICAL):
        broker.emit_before("ack", message())
    assert calls == ["duck"]
    assert "Unexpected failure in before_ack of <object" in caplog.text
    broker.close()


def test_a_signal_no_middleware_knows_fails_as_in_dramatiq(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = HookedStub(middleware=[])
    broker.add_middleware(Silent())
    with caplog.at_level(logging.CRITICAL):
        broker.emit_after("no_such_signal")
    assert "Unexpected failure in after_no_such_signal of <" in caplog.text
    broker.close()
