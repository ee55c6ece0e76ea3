"""Builds the configured broker, always with the same middleware stack.

Order matters: dramatiq runs `before_*` hooks in list order and `after_*` hooks in reverse.
`JobStatus` sits before `JobRetries` so it records an outcome after the retry decision, and
`JobProgress` sits after both so its final progress write lands before the job completes,
and `JobLogs` after it so a job's last lines (its error among them) are written before its
outcome is; it comes before `Cancellation`, which marks a cancelled message first.
`JobLimits` sits before `JobStatus`, so a postponed job is never marked running; its
`GiveBack` comes last, so a job's slot is given back as soon as its work is over, before
anyone records its outcome (the next job's start need not wait for those writes).
`JobTracing` comes first, so its attempt span encloses all the others' work.
`WorkerRegistry` and `Cancellation` come last but for `GiveBack`: they see a job only once
`JobStatus` has marked it running, and let go of it before anyone records its outcome.

One `RunningJobs` per broker (so per worker process) is shared by the middleware that need to
know what runs here: `JobStatus` adds and removes the jobs, the others read them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import dramatiq
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Middleware,
    Pipelines,
    ShutdownNotifications,
    TimeLimit,
)
from periodiq import PeriodiqMiddleware

from skillq.brokers.cancellation import Cancellation
from skillq.brokers.job_limits import GiveBack, JobLimits, Limit, OwnerLimit, limit_from
from skillq.brokers.job_logs import JobLogs
from skillq.brokers.job_status import JobStatus
from skillq.brokers.message_encoding import MessageEncoder
from skillq.brokers.progress import JobProgress
from skillq.brokers.retries import JobRetries
from skillq.brokers.running import RunningJobs
from skillq.brokers.tracing import JobTracing
from skillq.brokers.worker_registry import WorkerRegistry
from skillq.settings import Settings, WorkerSettings

#: Highest job priority; RabbitMQ queues are declared with it as `x-max-priority`.
MAX_PRIORITY = 10

#: How long, in milliseconds, a Redis worker may go without a heartbeat before its
#: unacknowledged messages are requeued (dramatiq's default is 60 s).
REDIS_HEARTBEAT_TIMEOUT_MS = 15_000
#: Chance, out of 1,000,000 broker commands, of running the Redis dead-worker maintenance.
REDIS_MAINTENANCE_CHANCE = 100_000


def job_middleware(
    workers: WorkerSettings,
    *,
    recover: Callable[[], Any] | None = None,
    max_result_bytes: int = 1_048_576,
    max_log_bytes: int = 1_048_576,
    limits: Mapping[str, Limit] | None = None,
    owners: OwnerLimit | None = None,
) -> list[Middleware]:
    """skillq's middleware stack, sharing one new `RunningJobs`.

    `TimeLimit` holds the worker's `workers.job_timeout_secs`: messages carry no time limit
    of their own, so a queued job follows the settings of the worker that runs it.
    """
    running = RunningJobs()
    job_limits = JobLimits(
        limits, owners, lease_secs=workers.dead_after_secs, renew_secs=workers.heartbeat_secs
    )
    retry_delay_ms = workers.retry_delay_secs * 1000
    return [
        JobTracing(),
        AgeLimit(),
        TimeLimit(time_limit=workers.job_timeout_secs * 1000),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        CurrentMessage(),
        job_limits,
        JobStatus(
            running,
            dead_after_secs=workers.dead_after_secs,
            max_result_bytes=max_result_bytes,
        ),
        JobRetries(
            max_retries=workers.max_retries,
            min_backoff=retry_delay_ms,
            # Exponential back-off from retry_delay_secs, doubling at most five times.
            max_backoff=retry_delay_ms * 32,
        ),
        JobProgress(),
        JobLogs(max_bytes=max_log_bytes),
        PeriodiqMiddleware(),
        WorkerRegistry(
            running,
            heartbeat_secs=workers.heartbeat_secs,
            dead_after_secs=workers.dead_after_secs,
            recover=recover,
        ),
        Cancellation(running),
        GiveBack(job_limits),
    ]


def build_broker(
    settings: Settings, *, recover: Callable[[], Any] | None = None
) -> dramatiq.Broker:
    """The configured broker; `recover` runs stale-job recovery from the worker registry.

    Also makes dramatiq encode messages with orjson (`MessageEncoder`): the encoder is
    process-wide in dramatiq, and every skillq process that sends or reads a message builds
    its broker here."""
    dramatiq.set_encoder(MessageEncoder())
    middleware = job_middleware(
        settings.workers,
        recover=recover,
        max_result_bytes=settings.jobs.max_result_bytes,
        max_log_bytes=settings.jobs.max_log_bytes,
        limits={
            name: limit_from(configured.max_concurrent, configured.rate)
            for name, configured in settings.job_types.items()
        },
        owners=OwnerLimit.of(settings.quotas),
    )
    broker_settings = settings.broker
    if broker_settings.backend == "redis":
        from skillq.brokers.redis_priority import PriorityRedisBroker

        return PriorityRedisBroker(
            url=broker_settings.url,
            namespace=broker_settings.namespace,
            middleware=middleware,
            heartbeat_timeout=REDIS_HEARTBEAT_TIMEOUT_MS,
            maintenance_chance=REDIS_MAINTENANCE_CHANCE,
        )
    if broker_settings.backend == "rabbitmq":
        from skillq.brokers.rabbitmq_delays import DelayPromptRabbitmqBroker

        return DelayPromptRabbitmqBroker(
            url=broker_settings.url,
            middleware=middleware,
            max_priority=MAX_PRIORITY,
            # Without confirms a message can vanish if RabbitMQ dies right after send(); its
            # job, pending in the store, is then sent again as a lost message.
            confirm_delivery=broker_settings.confirm_delivery,
        )
    from skillq.brokers.sqlite import SQLiteBroker

    return SQLiteBroker(
        path=broker_settings.path, lease_secs=broker_settings.lease_secs, middleware=middleware
    )
