"""Job types from outside skillq: the `@skillq.job_type` decorator and how skillq finds them.

A plugin is a plain function in the user's package:

    import skillq

    @skillq.job_type(queue="default", time_limit=60)
    def greet(name: str, times: int = 1) -> dict:
        skillq.report_progress(0.5, "greeting")
        return {"greeting": " ".join([f"hello {name}"] * times)}

The decorator only describes the job type (it returns a `PluginJobType`, still callable as
the function); nothing is declared at import time. `declare_plugins` finds them in the
modules named by the `skillq.job_types` entry-point group and by `[jobs] modules`, and
declares each as a dramatiq actor on the process's broker, with the same options the built-in
actors use, so they appear wherever the built-in types do (REST, OpenAPI, MCP, CLI,
schedules) and run under the same middleware on every broker.

Parameters are described by a JSON Schema (`params_schema={...}`), a pydantic model
(`params_schema=Model`: the function receives the validated model), or, by default, the
function's own type hints (validated by pydantic, passed as keyword arguments).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import dramatiq
import pydantic
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from skillq.errors import InvalidParams
from skillq.rates import parse_rate

ENTRY_POINT_GROUP = "skillq.job_types"
#: A job type's name: what clients submit as `type` and MCP lists as a tool.
NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-.")


class PluginError(Exception):
    """A plugin that cannot be used; the message names it, for one start-up line."""


@dataclass(frozen=True)
class PluginJobType:
    """A job type declared by `@skillq.job_type`, waiting to be declared on a broker."""

    function: Callable[..., Any]
    name: str
    queue: str
    description: str
    params_schema: dict[str, Any]
    #: Builds the function's arguments from the submitted params (validating them).
    arguments: Callable[[dict[str, Any]], tuple[tuple[Any, ...], dict[str, Any]]]
    time_limit_secs: float | None
    max_retries: int | None
    run_once: bool
    #: Global limits across all workers (overridden by `[job_types.<name>]`).
    max_concurrent: int | None = None
    rate: str | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)


def job_type(
    function: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    queue: str = "default",
    params_schema: dict[str, Any] | type[pydantic.BaseModel] | None = None,
    description: str | None = None,
    time_limit: float | None = None,
    max_retries: int | None = None,
    run_once: bool = False,
    max_concurrent: int | None = None,
    rate: str | None = None,
) -> Any:
    """Describe `function` as a job type (see the module's docstring).

    `time_limit` is in seconds (default: `workers.job_timeout_secs`); `max_retries` defaults
    to `workers.max_retries`; `run_once` types are never run a second time after a worker
    dies mid-job (they fail with `WorkerLost` instead). `max_concurrent` and `rate` (e.g.
    "10/minute") limit the type across all workers; `[job_types.<name>]` settings override them.
    """

    def describe(fn: Callable[..., Any]) -> PluginJobType:
        schema, arguments = _parameters(fn, params_schema)
        return PluginJobType(
            function=fn,
            name=name or fn.__name__,
            queue=queue,
            description=description or inspect.getdoc(fn) or "",
            params_schema=schema,
            arguments=arguments,
            time_limit_secs=time_limit,
            max_retries=max_retries,
            run_once=run_once,
            max_concurrent=max_concurrent,
            rate=rate,
        )

    return describe if function is None else describe(function)


def _parameters(
    fn: Callable[..., Any], declared: dict[str, Any] | type[pydantic.BaseModel] | None
) -> tuple[dict[str, Any], Callable[[dict[str, Any]], tuple[tuple[Any, ...], dict[str, Any]]]]:
    """The params JSON Schema, and how submitted params become the function's arguments."""
    if isinstance(declared, dict):
        return declared, lambda params: ((), params)
    if isinstance(declared, type) and issubclass(declared, pydantic.BaseModel):
        model = declared
        return _closed(model.model_json_schema()), lambda params: (
            (_validated(model, params),),
            {},
        )
    if declared is not None:
        raise PluginError(f"{fn.__qualname__}: params_schema must be a dict or a pydantic model")
    fields: dict[str, Any] = {}
    for parameter in inspect.signature(fn).parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        annotation = Any if parameter.annotation is parameter.empty else parameter.annotation
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[parameter.name] = (annotation, default)
    model = pydantic.create_model(f"{fn.__name__}_params", **fields)
    return _closed(model.model_json_schema()), lambda params: (
        (),
        dict(_validated(model, params)),
    )


def _closed(schema: dict[str, Any]) -> dict[str, Any]:
    """Unknown params are a mistake to report, as for the built-in job types."""
    return {**schema, "additionalProperties": schema.get("additionalProperties", False)}


def _validated(model: type[pydantic.BaseModel], params: dict[str, Any]) -> pydantic.BaseModel:
    try:
        return model.model_validate(params)
    except pydantic.ValidationError as error:
        details = [
            {
                "path": ".".join(["params", *map(str, problem["loc"])]),
                "message": problem["msg"],
            }
            for problem in error.errors()
        ]
        raise InvalidParams("params break the job type's schema", details) from None


def _result(value: Any) -> Any:
    """Results are stored as JSON: a pydantic model becomes its JSON form."""
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    return value


def plugin_sources(modules: Iterable[str]) -> list[tuple[str, Any]]:
    """(where, object) for each entry point of the group and each configured module."""
    sources: list[tuple[str, Any]] = []
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        where = f"entry point {entry_point.name} = {entry_point.value}"
        try:
            sources.append((where, entry_point.load()))
        except Exception as error:
            raise PluginError(f"{where}: cannot load it: {type(error).__name__}: {error}") from None
    for module in modules:
        where = f"[jobs] modules: {module}"
        try:
            sources.append((where, importlib.import_module(module)))
        except Exception as error:
            raise PluginError(
                f"{where}: cannot import it: {type(error).__name__}: {error}"
            ) from None
    return sources


def _job_types_in(source: Any) -> list[PluginJobType]:
    if isinstance(source, PluginJobType):
        return [source]
    if isinstance(source, types.ModuleType):
        return [value for value in vars(source).values() if isinstance(value, PluginJobType)]
    return []


def declare_plugins(broker: dramatiq.Broker, modules: Iterable[str] = ()) -> list[str]:
    """Declare every plugin job type on `broker`; the names declared. `PluginError` names the
    first plugin that cannot be used (import error, duplicate name, invalid schema)."""
    found: dict[str, str] = {}
    for where, source in plugin_sources(modules):
        described = _job_types_in(source)
        if not described:
            raise PluginError(f"{where}: declares no @skillq.job_type")
        for plugin in described:
            _check(plugin, where, broker, found)
            found[plugin.name] = where
            _declare(broker, plugin)
    return list(found)


def _check(plugin: PluginJobType, where: str, broker: dramatiq.Broker, found: dict) -> None:
    if not plugin.name or not set(plugin.name) <= NAME_CHARACTERS:
        raise PluginError(f"{where}: job type name {plugin.name!r}: use a-z, 0-9, _ - .")
    if plugin.name in found:
        raise PluginError(
            f"{where}: job type {plugin.name!r} is already declared by {found[plugin.name]}"
        )
    if plugin.name in broker.actors:
        raise PluginError(f"{where}: job type {plugin.name!r} is a built-in job type's name")
    try:
        Draft202012Validator.check_schema(plugin.params_schema)
    except SchemaError as error:
        raise PluginError(
            f"{where}: job type {plugin.name!r}: invalid params_schema: {error.message}"
        ) from None
    if plugin.params_schema.get("type", "object") != "object":
        raise PluginError(f"{where}: job type {plugin.name!r}: params must be a JSON object")
    concurrent = plugin.max_concurrent
    if concurrent is not None and (type(concurrent) is not int or concurrent < 1):
        raise PluginError(f"{where}: job type {plugin.name!r}: max_concurrent must be at least 1")
    if plugin.rate is not None:
        try:
            parse_rate(plugin.rate)
        except (ValueError, AttributeError) as error:
            raise PluginError(f"{where}: job type {plugin.name!r}: rate: {error}") from None


def _declare(broker: dramatiq.Broker, plugin: PluginJobType) -> None:
    def run(**params: Any) -> Any:
        args, kwargs = plugin.arguments(params)
        return _result(plugin.function(*args, **kwargs))

    run.__name__ = plugin.function.__name__
    run.__doc__ = plugin.description
    options: dict[str, Any] = {
        "params_schema": plugin.params_schema,
        "description": plugin.description,
        # Submissions are validated by pydantic too, so an error surfaces at submit time.
        "params_check": lambda params: plugin.arguments(params),
        # Bad params are the caller's mistake: retrying cannot help.
        "throws": (InvalidParams,),
    }
    if plugin.time_limit_secs is not None:
        options["time_limit"] = int(plugin.time_limit_secs * 1000)
    if plugin.max_retries is not None:
        options["max_retries"] = plugin.max_retries
    if plugin.run_once:
        options["run_once"] = True
    if plugin.max_concurrent is not None:
        options["max_concurrent"] = plugin.max_concurrent
    if plugin.rate is not None:
        options["rate"] = plugin.rate
    dramatiq.actor(run, actor_name=plugin.name, queue_name=plugin.queue, broker=broker, **options)
