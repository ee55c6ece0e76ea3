"""Settings: one TOML file, validated up front so a bad deployment fails at start-up.

Every key has a default, so no file (or an empty one) runs the embedded SQLite setup. The
dataclasses below are the schema, applied by `skillq.settings_loader`: a field's type says
how a raw value is converted and its ``Annotated`` rule (see ``_R``) says which values are
allowed, so a new key is one line here.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, NoReturn

from skillq import settings_rules as rules
from skillq.errors import SettingsError
from skillq.settings_loader import Context, build, read_toml

ENV_VAR = "SKILLQ_SETTINGS"
DEFAULT_FILE = "settings.toml"
_DATA_DIR = "~/.skillq"


def settings_error_exit(error: SettingsError) -> NoReturn:
    """Entry points stop here: a misconfiguration deserves one line, not a traceback."""
    print(str(error), file=sys.stderr)
    raise SystemExit(2)


def _R(**spec: Any) -> dict[str, Any]:
    """A field's rules, carried in ``Annotated``: choices, lo, hi, gt, prefix, nonempty, ..."""
    return spec


def _home(*parts: str) -> Callable[[], Path]:
    return lambda: Path(_DATA_DIR, *parts).expanduser()


_Count = Annotated[int, _R(lo=0, hi=256)]
_Positive = Annotated[float, _R(gt=0)]
_NonNegative = Annotated[float, _R(lo=0)]
_Name = Annotated[str, _R(nonempty=True)]
_Hours = Annotated[int, _R(lo=1, hi=168)]


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: _Name = "127.0.0.1"
    port: Annotated[int, _R(lo=1, hi=65535)] = 8000
    mode: Annotated[str, _R(choices=("local", "remote"))] = "local"
    data_dir: Path = field(default_factory=_home())
    max_body_size: Annotated[int, _R(gt=0)] = 1048576
    #: How often a job's event stream reads the store, and sends a keep-alive when idle.
    stream_poll_secs: _Positive = 0.5
    stream_keepalive_secs: _Positive = 15.0
    #: Host / Origin headers any request may carry (DNS-rebinding and cross-site protection;
    #: "name:*" for any port). Empty: `[mcp] allowed_hosts` / `allowed_origins`, else loopback
    #: names when `host` is a loopback address, else Host unchecked. Probes are never checked.
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    #: Open connections (and requests in progress) one API process accepts; past it new
    #: connections are closed at once and requests answered 503.
    limit_concurrency: Annotated[int, _R(lo=2, hi=1_000_000)] = 1000
    #: Seconds a connection may take to send a request's headers, after it opens or after
    #: its previous response (keep-alive); then it is closed. Stops idle and slowloris sockets.
    timeout_keep_alive_secs: Annotated[int, _R(lo=1, hi=3600)] = 5
    #: Values (objects, arrays, scalars) a JSON request body may hold.
    max_json_nodes: Annotated[int, _R(lo=100)] = 100_000
    #: Job event streams (`/api/v1/jobs/{id}/stream`) one principal may hold open at once.
    max_streams_per_principal: Annotated[int, _R(lo=1)] = 128
    #: Where clients reach this server, `scheme://host[:port]` (no path): the canonical URL
    #: its OAuth resource metadata names, and an accepted token audience (RFC 8707). Unset:
    #: taken from each request's Host (accepted as an audience only when Host is checked).
    public_url: str | None = None


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    backend: Annotated[str, _R(choices=("sqlite", "redis", "rabbitmq"))] = "sqlite"
    path: Annotated[Path, _R(in_data_dir="broker.db")] = field(default_factory=_home("broker.db"))
    url: str | None = None
    lease_secs: _Positive = 30.0
    #: Redis only: the key prefix, so several deployments (or test runs) can share a server.
    namespace: _Name = "dramatiq"
    #: RabbitMQ only: a send waits for RabbitMQ to confirm it holds the message (True), or
    #: not (False: about 1.7x the throughput of one submitting client here; a message
    #: RabbitMQ loses in a crash is sent again after `workers.requeue_pending_after_secs`).
    confirm_delivery: bool = True


@dataclass(frozen=True, slots=True)
class StorageSettings:
    backend: Annotated[str, _R(choices=("sqlite", "postgres"))] = "sqlite"
    path: Annotated[Path, _R(in_data_dir="jobs.db")] = field(default_factory=_home("jobs.db"))
    url: str | None = None
    pool_size: Annotated[int, _R(lo=1, hi=1000)] = 10
    #: PostgreSQL: a job's start mark waits for the disk like every other write (True), or
    #: not (False: the job starts sooner, ~0.4 ms at p50 here; a server crash may forget the
    #: last moments' start marks, and those jobs run again). Submits and outcomes always wait.
    synchronous_starts: bool = False

    def database_args(self) -> dict[str, Any]:
        """The plain values `skillq.storage.open_database` takes (the store reads no settings)."""
        return {
            "path": self.path,
            "url": self.url,
            "pool_size": self.pool_size,
            "synchronous_starts": self.synchronous_starts,
        }


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    #: Threads per worker process of each queue's own pool (`skillq.jobs.pools`); 0: no pool.
    ai_workers: _Count = 2
    index_workers: _Count = 1
    skill_workers: _Count = 4
    #: `sleep`, `[jobs] modules` plugins without a queue, and any other queue not named here.
    default_workers: _Count = 2
    #: The periodic maintenance actors (purge, recovery, WAL checkpoints): small and steady.
    maintenance_workers: _Count = 1
    #: Webhook deliveries (`skillq.webhooks`): short HTTP calls, their own pool.
    webhooks_workers: _Count = 1
    processes: Annotated[int, _R(lo=1, hi=64)] = 1
    job_timeout_secs: _Positive = 300.0
    max_retries: Annotated[int, _R(lo=0, hi=100)] = 3
    retry_delay_secs: _NonNegative = 5.0
    #: On SIGTERM, how long running jobs may take to finish before the rest are requeued.
    shutdown_grace_secs: _NonNegative = 30.0
    #: How often a worker process records that it lives (and refreshes its jobs' heartbeat).
    heartbeat_secs: _Positive = 2.0
    #: A worker (and its running jobs) silent for this long is dead; its jobs are recovered.
    dead_after_secs: _Positive = 15.0
    #: A job pending for this long since it was last sent had its message lost: re-send it.
    requeue_pending_after_secs: _Positive = 300.0


@dataclass(frozen=True, slots=True)
class JwtSettings:
    secret: str | None = None
    public_key: str | None = None
    issuer: str = "skillq"
    audience: str = "skillq-api"
    expiry_hours: _Positive = 24.0


@dataclass(frozen=True, slots=True)
class OidcSettings:
    provider_url: str | None = None
    client_id: str | None = None
    audience: str = "skillq-api"
    user_claim: _Name = "email"
    roles_claim: _Name = "groups"
    #: A token with an unknown key id refreshes the JWKS at most this often.
    jwks_min_refresh_secs: _NonNegative = 60.0


@dataclass(frozen=True, slots=True)
class AuthSettings:
    mode: Annotated[str, _R(choices=("none", "jwt", "oidc"))] = "none"
    api_key_header: _Name = "X-API-Key"
    jwt: JwtSettings = field(default_factory=JwtSettings)
    oidc: OidcSettings = field(default_factory=OidcSettings)
    #: Whether /metrics needs credentials like the API (probes are always open).
    protect_metrics: bool = False
    #: How long a process trusts an API key it checked; a revoked key works this much longer.
    api_key_cache_secs: _NonNegative = 5.0


@dataclass(frozen=True, slots=True)
class McpSettings:
    enabled: bool = True
    endpoint: Annotated[str, _R(prefix="/")] = "/mcp"
    legacy_sse: bool = True
    max_body_size: Annotated[int, _R(gt=0)] = 10485760
    timeout_secs: _Positive = 300.0
    inline_wait_secs: _NonNegative = 5.0
    #: Streamable HTTP without sessions, so any of several API processes can answer any request.
    stateless: bool = False
    #: Host / Origin headers MCP requests may carry (DNS-rebinding protection; "host:*" for any
    #: port). Empty: loopback names when `server.host` is a loopback address, else unchecked.
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    #: Streamable HTTP sessions open at once (all principals; 503 past it), per principal,
    #: and how long a session may stay idle before it is closed.
    max_sessions: Annotated[int, _R(lo=1)] = 1000
    max_sessions_per_principal: Annotated[int, _R(lo=1)] = 50
    session_idle_secs: _Positive = 300.0
    #: Legacy SSE connections (`<endpoint>/sse`) one principal may hold open at once.
    max_sse_per_principal: Annotated[int, _R(lo=1)] = 16


@dataclass(frozen=True, slots=True)
class JobsSettings:
    default_ttl_hours: _Hours = 24
    max_ttl_hours: _Hours = 168
    #: A job's kept log, in bytes of text: past it the oldest lines go (the tail is kept).
    max_log_bytes: Annotated[int, _R(lo=1024, hi=1 << 30)] = 1048576
    #: Modules declaring job types with `@skillq.job_type` (besides the `skillq.job_types`
    #: entry points of installed packages).
    modules: tuple[str, ...] = ()
    #: A job's params and result, as JSON, at most this many bytes (422 / the job fails).
    max_params_bytes: Annotated[int, _R(lo=1024)] = 262_144
    max_result_bytes: Annotated[int, _R(lo=1024)] = 1_048_576
    #: The deepest `offset` a job listing may ask for (400 past it): deep pages cost a scan.
    max_list_offset: Annotated[int, _R(lo=0)] = 10_000
    #: The latest a delayed job (`run_at` / `delay_secs`) may be asked to start, in hours.
    max_delay_hours: Annotated[int, _R(lo=1, hi=8760)] = 168
    #: The jobs of one workflow, and the dependencies of one job, at most this many (422).
    max_workflow_jobs: Annotated[int, _R(lo=1, hi=10_000)] = 100
    #: The jobs of one batch submit (`POST /api/v1/jobs:batch`), at most this many (422).
    max_batch_jobs: Annotated[int, _R(lo=1, hi=10_000)] = 1000


@dataclass(frozen=True, slots=True)
class JobTypeSettings:
    """`[job_types.<name>]`: limits that hold across every worker process and machine."""

    #: Attempts of this type running at once, all workers together.
    max_concurrent: Annotated[int | None, _R(lo=1, hi=10_000)] = None
    #: Starts allowed per window, e.g. "10/minute", "5/second", "3/10s".
    rate: str | None = None


@dataclass(frozen=True, slots=True)
class QuotaSettings:
    """Per-owner quotas, checked at submit (429 past them); every quota is off by default."""

    #: Pending jobs (queued, delayed, or waiting for a retry) one owner may have at once.
    max_pending: Annotated[int | None, _R(lo=0)] = None
    #: Jobs of one owner running at once, all workers together; more wait (postponed, not
    #: refused) until one of the owner's jobs ends.
    max_running: Annotated[int | None, _R(lo=1)] = None
    #: The `Retry-After` (seconds) of a submit refused for a quota.
    retry_after_secs: Annotated[int, _R(lo=1, hi=86400)] = 10
    #: Per job type, `[quotas.types.<name>] max_pending = N` / `max_running = N`: that
    #: type's pending / running jobs per owner.
    types: dict = field(default_factory=dict)

    def max_pending_of(self, job_type: str) -> int | None:
        """The type's own quota, if it has one."""
        return self.types.get(job_type, {}).get("max_pending")

    def max_running_by_type(self) -> dict[str, int]:
        """Each type's own running quota per owner."""
        found = {name: table.get("max_running") for name, table in self.types.items()}
        return {name: cap for name, cap in found.items() if cap is not None}


def _shipped_skills() -> tuple[Path, ...]:
    """The example skills shipped with skillq (`skills/`, installed as `skillq.example_skills`)."""
    return (Path(str(importlib.resources.files("skillq.example_skills"))),)


@dataclass(frozen=True, slots=True)
class SkillsSettings:
    paths: tuple[Path, ...] = field(default_factory=_shipped_skills)
    examples_dir: Annotated[Path, _R(in_data_dir="examples")] = field(
        default_factory=_home("examples")
    )
    memory_mb: Annotated[int, _R(lo=16, hi=1048576)] = 1024
    max_file_mb: Annotated[int, _R(lo=1, hi=1048576)] = 64
    max_processes: Annotated[int, _R(lo=1, hi=65536)] = 512
    max_output_bytes: Annotated[int, _R(lo=1024, hi=1073741824)] = 1048576
    #: bwrap (namespaces) | process (rlimits only) | auto: bwrap when it works on this machine.
    sandbox: Annotated[str, _R(choices=("auto", "bwrap", "process"))] = "auto"


@dataclass(frozen=True, slots=True)
class SearchSettings:
    path: Annotated[Path, _R(in_data_dir="collections")] = field(
        default_factory=_home("collections")
    )
    embeddings: Annotated[str, _R(choices=("none", "openai", "local"))] = "none"
    embeddings_url: str | None = None
    embeddings_model: str = "text-embedding-3-small"
    embeddings_api_key: str | None = None


@dataclass(frozen=True, slots=True)
class LlmSettings:
    url: str | None = None
    model: str = "gpt-4o-mini"
    api_key: str | None = None
    timeout_secs: _Positive = 60.0


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    #: console: readable lines for a terminal; json: one JSON object a line, for collectors.
    format: Annotated[str, _R(choices=("console", "json"))] = "console"
    level: Annotated[str, _R(choices=("debug", "info", "warning", "error", "critical"))] = "info"


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    #: none: no tracing at all (no tracer provider); otlp: spans to an OTLP/HTTP collector,
    #: which needs the `telemetry` extra.
    exporter: Annotated[str, _R(choices=("none", "otlp"))] = "none"
    otlp_endpoint: _Name = "http://127.0.0.1:4318"


@dataclass(frozen=True, slots=True)
class ScheduleSettings:
    name: _Name
    cron: Annotated[str, _R(cron=True)]
    type: _Name
    params: dict = field(default_factory=dict)


_Secret = Annotated[str, _R(prefix="whsec_")]


@dataclass(frozen=True, slots=True)
class WebhookSubscriptionSettings:
    """`[[webhooks.subscriptions]]`: every job's events of these types go to `url`."""

    url: _Name
    secret: _Secret
    events: tuple[str, ...] = ("job.completed", "job.failed", "job.cancelled")


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    #: Allow URLs to loopback, private, link-local and reserved addresses (tests, one host).
    allow_private: bool = False
    #: Signs the deliveries to a job's own `callback_url` (Standard Webhooks `whsec_...`);
    #: without it a submission's `callback_url` is refused.
    secret: Annotated[str | None, _R(prefix="whsec_")] = None
    #: Retries: the first after `first_retry_secs`, doubling up to `max_retry_secs`, until
    #: `max_attempts` attempts or the event is `max_age_secs` old.
    max_attempts: Annotated[int, _R(lo=1, hi=100)] = 12
    max_age_secs: _Positive = 86400.0
    first_retry_secs: _Positive = 5.0
    max_retry_secs: _Positive = 3600.0
    timeout_secs: _Positive = 10.0
    #: At most one `job.progress` event per job per this many seconds (per worker process).
    progress_interval_secs: _NonNegative = 5.0
    subscriptions: tuple[WebhookSubscriptionSettings, ...] = ()


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    workers: WorkerSettings = field(default_factory=WorkerSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    mcp: McpSettings = field(default_factory=McpSettings)
    jobs: JobsSettings = field(default_factory=JobsSettings)
    quotas: QuotaSettings = field(default_factory=QuotaSettings)
    skills: SkillsSettings = field(default_factory=SkillsSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    llm: LlmSettings = field(default_factory=LlmSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    schedules: tuple[ScheduleSettings, ...] = ()
    #: Per job type limits; the names are checked against the job types at worker start
    #: (plugins are declared after the settings are read).
    job_types: dict[str, JobTypeSettings] = field(default_factory=dict)
    source: Annotated[Path | None, _R(internal=True)] = None


#: The rules that span several fields (`skillq.settings_rules`), by the table they check.
_CHECKS: dict[type, Callable[[Any, str], None]] = {
    ServerSettings: rules.check_server,
    BrokerSettings: rules.check_url,
    StorageSettings: rules.check_url,
    AuthSettings: rules.check_auth,
    JobsSettings: rules.check_jobs,
    QuotaSettings: rules.check_quotas,
    SearchSettings: rules.check_search,
    TelemetrySettings: rules.check_telemetry,
    WebhookSubscriptionSettings: rules.check_subscription,
    WebhookSettings: rules.check_webhooks,
    JobTypeSettings: rules.check_job_type,
    Settings: rules.check_settings,
}


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read and validate settings: explicit path, else $SKILLQ_SETTINGS, else ./settings.toml.

    With none of those, the embedded defaults apply. Any problem raises SettingsError
    before anything starts, so a half-configured worker never runs.
    """
    via = ""
    if path is None and (env := os.environ.get(ENV_VAR)):
        path, via = env, f" (from {ENV_VAR})"
    elif path is None and Path(DEFAULT_FILE).is_file():
        path = DEFAULT_FILE
    source = Path(path).expanduser().absolute() if path is not None else None
    raw = read_toml(source, via) if source is not None else {}
    ctx = Context(
        base_dir=source.parent if source is not None else Path.cwd(),
        data_dir=Path(_DATA_DIR).expanduser(),
        checks=_CHECKS,
    )
    try:
        settings = build(Settings, raw, "", ctx)
    except SettingsError as exc:
        exc.source = source
        raise
    return dataclasses.replace(settings, source=source)
