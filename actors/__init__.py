"""Job types as dramatiq actors; importing this package configures the whole process.

`dramatiq actors` is the worker command on every broker: importing `actors` loads the
settings (`SKILLQ_SETTINGS`, else ./settings.toml, else the embedded default), builds the
broker they name with skillq's middleware, binds the job store (upgrading its schema if it
is behind) and then declares every job type on that broker. The API process imports it
too, so both sides always agree on the broker and the job types.
"""

import sys

import dramatiq
import peewee

from brokers.factory import build_broker
from skillq.settings import SettingsError, load_settings, settings_error_exit
from storage import bind_database, open_database
from storage.migrations import ensure_schema

try:
    settings = load_settings()
except SettingsError as error:
    settings_error_exit(error)

broker = build_broker(settings)
dramatiq.set_broker(broker)
bind_database(open_database(settings.storage))
try:
    ensure_schema()
except peewee.OperationalError as error:
    print(f"job store unavailable ({settings.storage.backend}): {error}".strip(), file=sys.stderr)
    raise SystemExit(2) from None

# Declared on the broker set above, so they must be imported after it.
from actors import diagnostics, examples, index, maintenance, skills  # noqa: E402
from skillq.schedules import declare_schedules  # noqa: E402

# User schedules ([[schedules]]): one periodic actor each, run by `skillq scheduler`.
try:
    schedule_actors = declare_schedules(broker, settings)
except SettingsError as error:
    settings_error_exit(error)

__all__ = ["broker", "diagnostics", "examples", "index", "maintenance", "settings", "skills"]
