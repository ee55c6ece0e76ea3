"""Periodic upkeep run by the scheduler (`skillq scheduler`, i.e. periodiq).

- `purge_expired_jobs`: TTL cleanup of finished jobs past `expires_at` (`ttl_hours`).
- `recover_stale_jobs`: running jobs of dead workers back to pending, lost messages re-sent
  (worker processes run the same pass themselves; this covers a cluster whose workers are
  all busy or gone).
- `prune_registry`: forget workers silent for a day (remote workers' registrations with them)
  and schedule fire claims a week old.
- `purge_dead_letters`: drop the SQLite broker's dead letters after a week.
"""

import dataclasses
import logging

import dramatiq
from periodiq import cron

from skillq.actors import broker, settings
from skillq.brokers.sqlite import SQLiteBroker
from skillq.jobs import recovery
from skillq.storage import jobs, schedules, workers, workflows
from skillq.storage.database import connection
from skillq.webhooks import events as webhook_events

logger = logging.getLogger(__name__)

#: Workers silent this long leave the registry (long enough to read what happened).
WORKER_RETENTION_SECS = 24 * 3600
#: Schedule fire claims older than this go (no schedule fires twice within a week of ticks).
FIRE_RETENTION_SECS = 7 * 24 * 3600
#: Dead letters (messages whose retries ran out) kept this long, to look at what failed:
#: Dramatiq's Redis and RabbitMQ brokers expire theirs after 7 days (`dead_message_ttl`).
DEAD_LETTER_RETENTION_SECS = 7 * 24 * 3600


@dramatiq.actor(queue_name="maintenance", periodic=cron("*/10 * * * *"), max_retries=0)
def purge_expired_jobs() -> int:
    """Delete finished jobs whose TTL (`ttl_hours`) has run out; pending or running ones stay."""
    with connection():
        purged = jobs.purge_expired()
        workflows.purge_expired()
    if purged:
        logger.info("Purged %d expired jobs.", purged)
    return purged


@dramatiq.actor(queue_name="maintenance", periodic=cron("* * * * *"), max_retries=0)
def recover_stale_jobs() -> dict:
    """Stale-job recovery (see `skillq.jobs.recovery`) and the webhook sweep, once a minute."""
    recovered = dataclasses.asdict(recovery.recover_stale_jobs(settings))
    if webhook_events.configured(settings.webhooks):
        recovered["webhook_events"], recovered["webhooks_resent"] = webhook_events.sweep(
            broker, settings
        )
    return recovered


@dramatiq.actor(queue_name="maintenance", periodic=cron("*/10 * * * *"), max_retries=0)
def prune_registry() -> dict:
    """Drop long-dead workers and old schedule fire claims, so both tables stay small."""
    with connection():
        pruned = {
            "workers": workers.prune(WORKER_RETENTION_SECS),
            "schedule_fires": schedules.prune(FIRE_RETENTION_SECS),
        }
    if any(pruned.values()):
        logger.info("Pruned %(workers)d workers and %(schedule_fires)d schedule fires.", pruned)
    return pruned


@dramatiq.actor(queue_name="maintenance", periodic=cron("7 * * * *"), max_retries=0)
def purge_dead_letters() -> int:
    """Delete the SQLite broker's week-old dead letters, hourly, so `broker.db` stays small.

    Redis and RabbitMQ expire dead letters themselves; SQLite keeps a row until told.
    """
    if not isinstance(broker, SQLiteBroker):
        return 0
    purged = broker.purge_dead_letters(DEAD_LETTER_RETENTION_SECS)
    if purged:
        logger.info("Purged %d dead-lettered messages.", purged)
    return purged
