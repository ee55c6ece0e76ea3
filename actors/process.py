"""Configures a worker (or API) process from its settings, once, on first import.

Loads the settings (`SKILLQ_SETTINGS`, else ./settings.toml, else the embedded default),
sets the log format and level (`[logging]`), sets up tracing as `[telemetry]` says, builds
the broker they name with skillq's middleware, and binds the job store, upgrading its schema
if it is behind. A bad settings file or an unreachable store ends the process with one line
and exit status 2, before any actor is declared.
"""

import sys

import dramatiq
import peewee

from skillq.brokers.factory import build_broker
from skillq.brokers.job_status import JobStatus
from skillq.brokers.progress import JobProgress
from skillq.jobs.recovery import recover_stale_jobs
from skillq.jobs.release import DependencyRelease
from skillq.jobs.types import JobTypeOptions
from skillq.log_output import configure_logging
from skillq.settings import SettingsError, load_settings, settings_error_exit
from skillq.storage import bind_database, open_database
from skillq.storage.migrations import ensure_schema
from skillq.tracing import TelemetryUnavailable, configure_tracing
from skillq.webhooks import events as webhook_events
from skillq.webhooks.middleware import WebhookOutcomes, WebhookProgress

try:
    settings = load_settings()
except SettingsError as error:
    settings_error_exit(error)

# In a `dramatiq` worker process the root handler already writes to the parent's pipe; its
# records (dramatiq's included) now come out in the configured format, with the job's ids.
configure_logging(settings.logging.format, settings.logging.level)
try:
    configure_tracing(settings.telemetry, service_name="skillq")
except TelemetryUnavailable as error:
    print(error, file=sys.stderr)
    raise SystemExit(2) from None


def _recover() -> None:
    """The worker registry's periodic pass: stale jobs, then webhook events nobody sent."""
    recover_stale_jobs(settings)
    if webhook_events.configured(settings.webhooks):
        webhook_events.sweep(broker, settings)


broker = build_broker(settings, recover=_recover)
broker.add_middleware(JobTypeOptions())
# Before JobStatus, so it settles a job's dependants after their dependency's outcome is
# recorded (`after_*` hooks run in reverse order).
broker.add_middleware(DependencyRelease(settings), before=JobStatus)
if webhook_events.configured(settings.webhooks):
    # Outcomes after JobStatus records them (after_* hooks run in reverse list order).
    broker.add_middleware(WebhookOutcomes(settings), before=JobStatus)
    broker.add_middleware(WebhookProgress(settings), after=JobProgress)
dramatiq.set_broker(broker)
bind_database(open_database(settings.storage.backend, **settings.storage.database_args()))
try:
    ensure_schema()
except peewee.OperationalError as error:
    print(f"job store unavailable ({settings.storage.backend}): {error}".strip(), file=sys.stderr)
    raise SystemExit(2) from None
