"""Settings loader: one TOML file, validated up front so a bad deployment fails at start-up.

Every key has a default, so no file (or an empty one) runs the embedded SQLite setup. The
dataclasses below are the schema: a field's type says how a raw value is converted and its
``Annotated`` rule (see ``_R``) says which values are allowed, so a new key is one line here.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import re
import sys
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, NoReturn

from periodiq import CronSpec

ENV_VAR = "SKILLQ_SETTINGS"
DEFAULT_FILE = "settings.toml"
_DATA_DIR = "~/.skillq"


class SettingsError(Exception):
    """A settings problem, rendered as one line so it reads well in logs and on a terminal."""

    def __init__(self, problem: str, key: str | None = None, source: Path | str | None = None):
        super().__init__(problem)
        self.problem = problem
        self.key = key
        self.source = source

    def __str__(self) -> str:
        where = f"settings error in {self.source}" if self.source else "settings error"
        text = f"{where}: {self.key}: {self.problem}" if self.key else f"{where}: {self.problem}"
        return " ".join(text.splitlines())


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


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    backend: Annotated[str, _R(choices=("sqlite", "redis", "rabbitmq"))] = "sqlite"
    path: Annotated[Path, _R(in_data_dir="broker.db")] = field(default_factory=_home("broker.db"))
    url: str | None = None
    lease_secs: _Positive = 30.0
    #: Redis only: the key prefix, so several deployments (or test runs) can share a server.
    namespace: _Name = "dramatiq"


@dataclass(frozen=True, slots=True)
class StorageSettings:
    backend: Annotated[str, _R(choices=("sqlite", "postgres"))] = "sqlite"
    path: Annotated[Path, _R(in_data_dir="jobs.db")] = field(default_factory=_home("jobs.db"))
    url: str | None = None
    pool_size: Annotated[int, _R(lo=1, hi=1000)] = 10


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    ai_workers: _Count = 2
    index_workers: _Count = 1
    skill_workers: _Count = 4
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


@dataclass(frozen=True, slots=True)
class JobsSettings:
    default_ttl_hours: _Hours = 24
    max_ttl_hours: _Hours = 168


def _shipped_skills() -> tuple[Path, ...]:
    """The example skills shipped inside the distribution (`skills/` beside the packages)."""
    return (Path(__file__).resolve().parent.parent / "skills",)


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
class ScheduleSettings:
    name: _Name
    cron: Annotated[str, _R(cron=True)]
    type: _Name
    params: dict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    workers: WorkerSettings = field(default_factory=WorkerSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    mcp: McpSettings = field(default_factory=McpSettings)
    jobs: JobsSettings = field(default_factory=JobsSettings)
    skills: SkillsSettings = field(default_factory=SkillsSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    llm: LlmSettings = field(default_factory=LlmSettings)
    schedules: tuple[ScheduleSettings, ...] = ()
    source: Annotated[Path | None, _R(internal=True)] = None


# --- cross-field rules: the few constraints one field cannot express alone ---

_URL_SCHEMES = {
    "redis": ("redis://", "rediss://"),
    "rabbitmq": ("amqp://", "amqps://"),
    "postgres": ("postgres://", "postgresql://"),
}


def _check_url(obj: BrokerSettings | StorageSettings, where: str) -> None:
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


def _check_auth(obj: AuthSettings, where: str) -> None:
    if obj.mode == "jwt" and obj.jwt.secret is None and obj.jwt.public_key is None:
        problem = f"required when {where}.mode is 'jwt' (or set {where}.jwt.public_key)"
        raise SettingsError(problem, f"{where}.jwt.secret")
    if obj.mode == "oidc" and obj.oidc.provider_url is None:
        problem = f"required when {where}.mode is 'oidc'"
        raise SettingsError(problem, f"{where}.oidc.provider_url")


def _check_jobs(obj: JobsSettings, where: str) -> None:
    if obj.default_ttl_hours > obj.max_ttl_hours:
        limit, got = obj.max_ttl_hours, obj.default_ttl_hours
        problem = f"must not exceed {where}.max_ttl_hours ({limit}) (got {got})"
        raise SettingsError(problem, f"{where}.default_ttl_hours")


def _check_search(obj: SearchSettings, where: str) -> None:
    if obj.embeddings == "openai" and obj.embeddings_url is None:
        problem = f"required when {where}.embeddings is 'openai'"
        raise SettingsError(problem, f"{where}.embeddings_url")


def _check_settings(obj: Settings, where: str) -> None:
    seen: dict[str, int] = {}
    for i, name in enumerate(schedule.name for schedule in obj.schedules):
        if name in seen:
            problem = f"duplicate schedule name {name!r} (also schedules[{seen[name]}])"
            raise SettingsError(problem, f"schedules[{i}].name")
        seen[name] = i


_CHECKS: dict[type, Callable[[Any, str], None]] = {
    BrokerSettings: _check_url,
    StorageSettings: _check_url,
    AuthSettings: _check_auth,
    JobsSettings: _check_jobs,
    SearchSettings: _check_search,
    Settings: _check_settings,
}

_CRON_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
)


def _cron_problem(spec: str) -> str | None:
    """periodiq accepts e.g. minute 61 or a sixth field silently, so check what it parsed."""
    text = spec.strip()
    if text.startswith("@") and text not in CronSpec._named_spec:
        return f"unknown shortcut {text!r}"
    parts = CronSpec._named_spec.get(text, text).split()
    if len(parts) != 5:
        return f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}"
    try:
        parsed = CronSpec.parse(spec)
    except Exception as exc:
        return str(exc) or type(exc).__name__
    values = (parsed.minute, parsed.hour, parsed.dom, parsed.month, parsed.dow)
    for (name, lo, hi), got in zip(_CRON_FIELDS, values, strict=True):
        if not got or min(got) < lo or max(got) > hi:
            return f"{name} must be within {lo}..{hi}"
    return None


# --- conversion ---

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_PARSERS: dict[type, Callable[[str], Any]] = {
    bool: lambda s: _BOOLS.get(s.lower()),
    int: lambda s: int(s) if _INT.fullmatch(s) else None,
    float: lambda s: float(s) if _FLOAT.fullmatch(s) else None,
}
_EXPECTED = {int: "an integer", float: "a finite number", bool: "a boolean", str: "a string"}
_EXPECTED.update({Path: "a non-empty path", dict: "a table"})


@dataclass(slots=True)
class _Context:
    base_dir: Path
    data_dir: Path = field(default_factory=_home())


def _substitute(text: str, key: str) -> str:
    """Like the shell: ``${VAR:-default}`` also applies when VAR is set but empty."""

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if default is not None:
            return value or default
        if value is None:
            raise SettingsError(f"environment variable {name} is not set", key)
        return value

    return _VAR.sub(replace, text)


def _substitute_tree(value: Any, key: str) -> Any:
    if isinstance(value, str):
        return _substitute(value, key)
    if isinstance(value, dict):
        return {k: _substitute_tree(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute_tree(v, f"{key}[{i}]") for i, v in enumerate(value)]
    return value


def _wrong_type(expected: str, value: Any, key: str) -> SettingsError:
    names = {bool: "boolean", int: "integer", float: "float", str: "string"}
    names.update({dict: "table", list: "array"})
    got = names.get(type(value), type(value).__name__)
    got += f" {str(value).lower()}" if type(value) is bool else ""
    got += f" {value!r}" if type(value) in (int, float, str) else ""
    return SettingsError(f"expected {expected} (got {got})", key)


def _scalar(tp: type, value: Any, key: str, ctx: _Context) -> Any:
    """TOML types map straight through; strings (e.g. from ``${PORT}``) must parse cleanly."""
    got = value
    if isinstance(value, str) and tp in _PARSERS:
        value = _PARSERS[tp](value.strip())
    elif tp is float and type(value) is int:
        value = float(value)
    elif tp is Path and isinstance(value, str) and value:
        path = Path(value).expanduser()
        return path if path.is_absolute() else ctx.base_dir / path
    elif tp is dict and isinstance(value, dict):
        return _substitute_tree(value, key)
    if type(value) is tp and (tp is not float or math.isfinite(value)):
        return value
    raise _wrong_type(_EXPECTED[tp], got, key)


def _convert(tp: Any, value: Any, key: str, ctx: _Context) -> Any:
    if isinstance(value, str):
        value = _substitute(value, key)
    args = typing.get_args(tp)
    if isinstance(tp, types.UnionType):  # ``X | None``: an empty string means unset
        if value == "":
            return None
        return _convert(next(a for a in args if a is not type(None)), value, key, ctx)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, ctx)
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, list):
            raise _wrong_type("an array of tables", value, key)
        return tuple(_convert(args[0], item, f"{key}[{i}]", ctx) for i, item in enumerate(value))
    return _scalar(tp, value, key, ctx)


def _constrain(value: Any, spec: dict[str, Any], key: str) -> None:
    def fail(problem: str) -> NoReturn:
        raise SettingsError(f"{problem} (got {value!r})", key)

    if "choices" in spec and value not in spec["choices"]:
        fail(f"must be one of {', '.join(spec['choices'])}")
    lo, hi, gt = spec.get("lo"), spec.get("hi"), spec.get("gt")
    if lo is not None and hi is not None and not lo <= value <= hi:
        fail(f"must be between {lo} and {hi}")
    if lo is not None and hi is None and value < lo:
        fail(f"must be at least {lo}")
    if gt is not None and value <= gt:
        fail(f"must be greater than {gt}")
    if spec.get("nonempty") and not value.strip():
        fail("must not be empty")
    if "prefix" in spec and not value.startswith(spec["prefix"]):
        fail(f"must start with {spec['prefix']!r}")
    if spec.get("cron") and (problem := _cron_problem(value)):
        raise SettingsError(f"invalid cron expression {value!r}: {problem}", key)


@functools.cache
def _schema(cls: type) -> dict[str, tuple[Any, dict[str, Any], bool]]:
    """Per field: the plain type, its constraint spec, and whether the file must give it."""
    hints = typing.get_type_hints(cls, include_extras=True)
    schema = {}
    for fld in dataclasses.fields(cls):
        tp, spec = hints[fld.name], {}
        if typing.get_origin(tp) is Annotated:
            tp, *rules = typing.get_args(tp)
            spec = {k: v for rule in rules for k, v in rule.items()}
        required = fld.default is fld.default_factory is dataclasses.MISSING
        if not spec.get("internal"):
            schema[fld.name] = (tp, spec, required)
    return schema


def _build(cls: type, raw: Any, where: str, ctx: _Context) -> Any:
    if not isinstance(raw, dict):
        raise _wrong_type("a table", raw, where or "(top level)")
    schema = _schema(cls)
    for name in raw:
        if name not in schema:
            close = difflib.get_close_matches(name, schema, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SettingsError(f"unknown key{hint}", f"{where}.{name}" if where else name)
    kwargs: dict[str, Any] = {}
    for name, (tp, spec, required) in schema.items():
        key = f"{where}.{name}" if where else name
        if name in raw:
            kwargs[name] = _convert(tp, raw[name], key, ctx)
            if kwargs[name] is not None:
                _constrain(kwargs[name], spec, key)
        elif dataclasses.is_dataclass(tp):  # build absent sections so derived defaults apply
            kwargs[name] = _build(tp, {}, key, ctx)
        elif "in_data_dir" in spec:
            kwargs[name] = ctx.data_dir / spec["in_data_dir"]
        elif required:
            raise SettingsError("required key is missing", key)
    obj = cls(**kwargs)
    if isinstance(obj, ServerSettings):
        ctx.data_dir = obj.data_dir
    if check := _CHECKS.get(cls):
        check(obj, where)
    return obj


def _read(path: Path, via: str) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problem = f"file not found{via}"
    except UnicodeDecodeError:
        problem = "file is not valid UTF-8"
    except OSError as exc:
        problem = f"cannot read file: {exc.strerror}"
    except tomllib.TOMLDecodeError as exc:
        m = re.fullmatch(r"(.*) \((at line \d+, column \d+|at end of document)\)", str(exc), re.S)
        problem = f"invalid TOML {m[2]}: {m[1]}" if m else f"invalid TOML: {exc}"
    raise SettingsError(problem, source=path)


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
    raw = _read(source, via) if source is not None else {}
    ctx = _Context(base_dir=source.parent if source is not None else Path.cwd())
    try:
        settings = _build(Settings, raw, "", ctx)
    except SettingsError as exc:
        exc.source = source
        raise
    return dataclasses.replace(settings, source=source)
