"""The settings' cross-field rules: the few constraints that one field's type and
`Annotated` rule cannot express alone (a URL whose scheme depends on the backend, a secret
required by a mode, a default that must not pass its maximum).

Apart from the schema (`skillq.settings`) because they are code, not declarations: the
schema says what each key is, these say how keys of one table fit together. Each takes the
built table and where it sits (its key path, for the error) and raises `SettingsError`.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from skillq.errors import SettingsError
from skillq.rates import parse_rate

if TYPE_CHECKING:
    from skillq.settings import (
        AuthSettings,
        BrokerSettings,
        JobsSettings,
        JobTypeSettings,
        QuotaSettings,
        SearchSettings,
        ServerSettings,
        Settings,
        StorageSettings,
        TelemetrySettings,
        WebhookSettings,
        WebhookSubscriptionSettings,
    )

#: The keys of a `[quotas.types.<name>]` table, and the least value of each.
QUOTA_TYPE_KEYS = {"max_pending": 0, "max_running": 1}


#: The events a webhook subscription may ask for.
WEBHOOK_EVENTS = ("job.completed", "job.failed", "job.cancelled", "job.progress")

_URL_SCHEMES = {
    "redis": ("redis://", "rediss://"),
    "rabbitmq": ("amqp://", "amqps://"),
    "postgres": ("postgres://", "postgresql://"),
}


def check_url(obj: BrokerSettings | StorageSettings, where: str) -> None:
    schemes = _URL_SCHEMES.get(obj.backend)
    if schemes is None:
        return
    if obj.url is None:
        raise SettingsError(f"required when {where}.backend is {obj.backend!r}", f"{where}.url")
    if not obj.url.startswith(schemes):
        # Only the scheme is echoed: the rest of a URL often holds a password.
        got = obj.url.split("://", 1)[0] + "://..." if "://" in obj.url else "no scheme"
        need = " or ".join(schemes)
        raise SettingsError(f"must start with {need} (got {got})", f"{where}.url")


def check_server(obj: ServerSettings, where: str) -> None:
    if obj.public_url is None:
        return
    parts = urlsplit(obj.public_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problem = "must be an http:// or https:// URL with a host"
    elif parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        problem = "must be scheme://host[:port] only (no path, query, fragment or user)"
    else:
        try:
            parts.port  # noqa: B018 -- raises on a port that is not a number
            return
        except ValueError:
            problem = "has a port that is not a number"
    raise SettingsError(f"{problem} (got {obj.public_url!r})", f"{where}.public_url")


def check_auth(obj: AuthSettings, where: str) -> None:
    if obj.mode == "jwt" and obj.jwt.secret is None and obj.jwt.public_key is None:
        problem = f"required when {where}.mode is 'jwt' (or set {where}.jwt.public_key)"
        raise SettingsError(problem, f"{where}.jwt.secret")
    if obj.mode == "oidc" and obj.oidc.provider_url is None:
        problem = f"required when {where}.mode is 'oidc'"
        raise SettingsError(problem, f"{where}.oidc.provider_url")


def check_jobs(obj: JobsSettings, where: str) -> None:
    if obj.default_ttl_hours > obj.max_ttl_hours:
        limit, got = obj.max_ttl_hours, obj.default_ttl_hours
        problem = f"must not exceed {where}.max_ttl_hours ({limit}) (got {got})"
        raise SettingsError(problem, f"{where}.default_ttl_hours")


def check_quotas(obj: QuotaSettings, where: str) -> None:
    for name, table in obj.types.items():
        key = f"{where}.types.{name}"
        if not isinstance(table, dict):
            raise SettingsError(f"expected a table with {', '.join(QUOTA_TYPE_KEYS)}", key)
        for option, value in table.items():
            if option not in QUOTA_TYPE_KEYS:
                problem = "unknown key (a type's quota has max_pending or max_running)"
                raise SettingsError(problem, f"{key}.{option}")
            least = QUOTA_TYPE_KEYS[option]
            if type(value) is not int or value < least:
                problem = f"must be an integer >= {least} (got {value!r})"
                raise SettingsError(problem, f"{key}.{option}")


def check_search(obj: SearchSettings, where: str) -> None:
    if obj.embeddings == "openai" and obj.embeddings_url is None:
        problem = f"required when {where}.embeddings is 'openai'"
        raise SettingsError(problem, f"{where}.embeddings_url")


def check_telemetry(obj: TelemetrySettings, where: str) -> None:
    if not obj.otlp_endpoint.startswith(("http://", "https://")):
        problem = "must start with http:// or https:// (OTLP over HTTP)"
        raise SettingsError(problem, f"{where}.otlp_endpoint")


def _check_secret(secret: str | None, key: str) -> None:
    """A Standard Webhooks secret: `whsec_` and base64 of at least 24 random bytes."""
    if secret is None:
        return
    try:
        key_bytes = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except ValueError:
        raise SettingsError("must be whsec_ followed by base64", key) from None
    if len(key_bytes) < 24:
        raise SettingsError("must hold at least 24 bytes (32 recommended)", key)


def check_webhooks(obj: WebhookSettings, where: str) -> None:
    _check_secret(obj.secret, f"{where}.secret")
    if obj.first_retry_secs > obj.max_retry_secs:
        raise SettingsError(f"must not exceed {where}.max_retry_secs", f"{where}.first_retry_secs")


def check_subscription(obj: WebhookSubscriptionSettings, where: str) -> None:
    _check_secret(obj.secret, f"{where}.secret")
    if not obj.url.startswith(("http://", "https://")):
        raise SettingsError("must start with http:// or https://", f"{where}.url")
    for i, event in enumerate(obj.events):
        if event not in WEBHOOK_EVENTS:
            problem = f"must be one of {', '.join(WEBHOOK_EVENTS)} (got {event!r})"
            raise SettingsError(problem, f"{where}.events[{i}]")
    if not obj.events:
        raise SettingsError("must name at least one event", f"{where}.events")


def check_job_type(obj: JobTypeSettings, where: str) -> None:
    if obj.rate is not None:
        try:
            parse_rate(obj.rate)
        except ValueError as error:
            raise SettingsError(str(error), f"{where}.rate") from None


def check_settings(obj: Settings, where: str) -> None:
    seen: dict[str, int] = {}
    for i, name in enumerate(schedule.name for schedule in obj.schedules):
        if name in seen:
            problem = f"duplicate schedule name {name!r} (also schedules[{seen[name]}])"
            raise SettingsError(problem, f"schedules[{i}].name")
        seen[name] = i
