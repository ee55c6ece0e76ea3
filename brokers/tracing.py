"""One span per attempt of a job, in the job's trace, on the worker side.

The parent is the enqueue that sent the message (its W3C `traceparent` is in the message
options, kept as they are when `Retries` sends the message again), so every attempt of a job,
retries included, is a sibling span of one trace. The span is current while the actor runs,
so what the actor traces (a skill's subprocess) is a child of its attempt.

First in the middleware list: its `before_*` hook runs before any other and its `after_*`
hook after all of them, so the span covers the store writes and sees the recorded outcome.
"""

from __future__ import annotations

import threading
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware
from opentelemetry.trace import SpanKind, Status, StatusCode

from skillq import tracing
from skillq.brokers.job_status import ATTEMPT_OPTION, CANCELLED_OPTION, JOB_ID_OPTION


class JobTracing(Middleware):
    """A `skillq.attempt` span per message processed, ended with its outcome."""

    def __init__(self) -> None:
        # A worker thread processes one message at a time: its span and context token.
        self._local = threading.local()

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        if not tracing.enabled():
            return
        parent = tracing.extract(message.options)
        attributes = {
            "messaging.system": "dramatiq",
            "messaging.message.id": message.message_id,
            "messaging.destination.name": message.queue_name,
            "skillq.job_type": message.actor_name,
        }
        job_id = message.options.get(JOB_ID_OPTION)
        if job_id is not None:
            attributes["skillq.job_id"] = job_id
        span = tracing.start_span(
            f"skillq.attempt {message.actor_name}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        )
        if span is not None:
            self._local.current = (message.message_id, span, tracing.activate(span))

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.Message,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None:
            outcome = "completed"
        elif message.options.get(CANCELLED_OPTION):
            outcome = "cancelled"
        elif message.failed:
            outcome = "failed"
        else:
            outcome = "retrying"
        self._end(message, outcome, exception)

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        self._end(message, "skipped", None)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        tracing.flush()

    def _end(
        self, message: dramatiq.Message, outcome: str, exception: BaseException | None
    ) -> None:
        current = getattr(self._local, "current", None)
        if current is None or current[0] != message.message_id:
            return
        self._local.current = None
        _, span, token = current
        attempt = message.options.get(ATTEMPT_OPTION)
        if attempt is not None:
            span.set_attribute("skillq.attempt", attempt)
        span.set_attribute("skillq.outcome", outcome)
        if exception is not None:
            span.record_exception(exception)
            if outcome != "cancelled":
                span.set_status(Status(StatusCode.ERROR, type(exception).__name__))
        tracing.deactivate(token)
        span.end()
