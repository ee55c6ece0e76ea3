"""Periodic upkeep run by the scheduler (`skillq scheduler`, i.e. periodiq)."""

import logging

import dramatiq
from periodiq import cron

from storage import jobs

logger = logging.getLogger(__name__)


@dramatiq.actor(queue_name="maintenance", periodic=cron("*/10 * * * *"), max_retries=0)
def purge_expired_jobs() -> int:
    """Delete finished jobs whose TTL (`ttl_hours`) has run out; pending or running ones stay."""
    purged = jobs.purge_expired()
    if purged:
        logger.info("Purged %d expired jobs.", purged)
    return purged
