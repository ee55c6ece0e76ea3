"""User schedules from `[[schedules]]`: each fire submits a job through the coordinator.

Every schedule becomes a periodiq actor (`schedule:<name>`, on the `maintenance` queue), so the
scheduler process (`skillq scheduler`) enqueues it at each cron tick and a worker runs it.
periodiq has no leader election: two schedulers enqueue every tick twice. The actor therefore
claims (schedule name, fire time) in the store, under a unique index, before it submits, and
the job's idempotency key names the same fire, so a tick submits one job whoever runs it.
The fire time is the tick periodiq stamped on the message (`scheduled_at`), to the minute.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

import dramatiq
import pendulum
from dramatiq.middleware import CurrentMessage
from periodiq import cron

from skillq.brokers.job_status import current_worker_id
from skillq.errors import SkillqError
from skillq.jobs.coordinator import JobCoordinator
from skillq.jobs.schema_messages import schema_errors
from skillq.jobs.types import job_types_of
from skillq.json_values import storable_problems
from skillq.settings import ScheduleSettings, Settings, SettingsError
from skillq.storage import schedules
from skillq.storage.database import connection

logger = logging.getLogger(__name__)

#: Owner of the jobs that schedules submit.
SCHEDULER_OWNER = "scheduler"
ACTOR_PREFIX = "schedule:"


def fire_time(message: dramatiq.Message | None) -> datetime:
    """The tick a message stands for, in naive UTC to the minute (both schedulers agree)."""
    if message is not None and "scheduled_at" in message.options:
        stamped = pendulum.parse(message.options["scheduled_at"])
        moment = datetime.fromtimestamp(stamped.timestamp(), UTC)  # a plain datetime
    elif message is not None:
        moment = datetime.fromtimestamp(message.message_timestamp / 1000, UTC)
    else:
        moment = datetime.now(UTC)
    return moment.astimezone(UTC).replace(tzinfo=None, second=0, microsecond=0)


def fire(schedule: ScheduleSettings, coordinator: JobCoordinator, fire_at: datetime) -> str | None:
    """Submit the schedule's job for `fire_at` unless someone already did; returns its id."""
    with connection():
        if not schedules.claim(schedule.name, fire_at, claimed_by=current_worker_id()):
            logger.info("schedule %s at %s: already fired", schedule.name, fire_at.isoformat())
            return None
        try:
            submission = coordinator.submit_job(
                {
                    "type": schedule.type,
                    "params": schedule.params,
                    "idempotency_key": f"{ACTOR_PREFIX}{schedule.name}@{fire_at.isoformat()}",
                },
                owner=SCHEDULER_OWNER,
                # The operator wrote the schedule: it may name any owner's data.
                any_owner=True,
            )
        except Exception:
            # Let a retry of this message (or the other scheduler's) fire it instead.
            schedules.release(schedule.name, fire_at)
            raise
        schedules.record_job(schedule.name, fire_at, submission.job.id)
    logger.info(
        "schedule %s at %s: fired job %s", schedule.name, fire_at.isoformat(), submission.job.id
    )
    return submission.job.id


def check_schedules(broker: dramatiq.Broker, settings: Settings) -> None:
    """A schedule naming an unknown job type or invalid params would fail at every tick;
    refuse it at start-up instead, naming the key like any other settings error."""
    catalogue = job_types_of(broker)
    for i, schedule in enumerate(settings.schedules):
        job_type = catalogue.get(schedule.type)
        if job_type is None:
            known = ", ".join(catalogue) or "none"
            problem = f"unknown job type {schedule.type!r} (known: {known})"
            raise SettingsError(problem, f"schedules[{i}].type", settings.source)
        root = f"schedules[{i}].params"
        details = storable_problems(schedule.params, root) or schema_errors(
            job_type.validator, schedule.params, root
        )
        if details:
            problem = f"{details[0]['message']} (at {details[0]['path']})"
            raise SettingsError(problem, f"schedules[{i}].params", settings.source)
        if job_type.params_check is not None:
            # What a schema cannot say, as at submission: e.g. a skill or tool that is not there.
            try:
                job_type.params_check(schedule.params)
            except SkillqError as error:
                key = f"schedules[{i}].params"
                raise SettingsError(error.message, key, settings.source) from None


def declare_schedules(broker: dramatiq.Broker, settings: Settings) -> list[dramatiq.Actor]:
    """One periodic actor per `[[schedules]]` entry, declared on `broker`; raises
    SettingsError for a schedule that could never fire (see `check_schedules`)."""
    check_schedules(broker, settings)
    coordinator: list[JobCoordinator] = []  # built on first fire, once every actor exists

    def coordinator_of() -> JobCoordinator:
        if not coordinator:
            coordinator.append(JobCoordinator(broker, settings))
        return coordinator[0]

    return [_declare(broker, schedule, coordinator_of) for schedule in settings.schedules]


def _declare(
    broker: dramatiq.Broker,
    schedule: ScheduleSettings,
    coordinator_of: Callable[[], JobCoordinator],
) -> dramatiq.Actor:
    def run_schedule() -> str | None:
        fire_at = fire_time(CurrentMessage.get_current_message())
        return fire(schedule, coordinator_of(), fire_at)

    run_schedule.__name__ = f"schedule_{schedule.name}"
    return dramatiq.actor(
        run_schedule,
        actor_name=f"{ACTOR_PREFIX}{schedule.name}",
        queue_name="maintenance",
        broker=broker,
        periodic=cron(schedule.cron),
        max_retries=3,
    )
