"""Reading the configuration files: YAML in, environment variables expanded, models
validated, and every error named by file, field path and what is wrong."""

from __future__ import annotations

import importlib.util
import os
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ValidationError,
)

from shadowproxy.config.models import (
    Config,
    MainConfig,
    RouteConfig,
    check_endpoint_url,
)
from shadowproxy.errors import ConfigError
from shadowproxy.experiments.chaos import FieldError
from shadowproxy.experiments.spec import check_layers
from shadowproxy.validation import (
    did_you_mean,
)

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read the main file and every route file; raise ``ConfigError`` on the first problem."""
    env = os.environ if environ is None else environ
    main_path = Path(path)
    source = str(path)
    raw = _read_yaml(main_path, source)
    raw = _expand(raw, env, source, "")
    main = _with_endpoint_from(env, _validate(MainConfig, raw, source))

    routes: list[RouteConfig] = list(main.routes)
    sources: list[str] = [source] * len(routes)
    fields = [f"routes[{index}]" for index in range(len(routes))]
    if main.routes_dir is not None:
        for file in _route_files(main_path.parent / main.routes_dir, source):
            route_source = str(file)
            route_raw = _expand(_read_yaml(file, route_source), env, route_source, "")
            routes.append(_validate(RouteConfig, route_raw, route_source))
            sources.append(route_source)
            fields.append("")

    _check_route_set(routes, sources, fields)
    _check_grpc_listener(main, routes, sources, fields)
    routes = [
        _with_descriptor_set(route, source, field)
        for route, source, field in zip(routes, sources, fields, strict=True)
    ]
    if not routes and main.default_upstream is None:
        raise ConfigError(source, None, "no routes and no default_upstream: nothing to proxy")
    return Config(source=source, main=main, routes=tuple(routes), route_sources=tuple(sources))


ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
"""The AWS SDKs' own variables for an S3-compatible endpoint, most specific first
(pyarrow's S3 client does not read them itself)."""


def endpoint_from(env: Mapping[str, str]) -> str | None:
    """The S3 endpoint the environment names, checked; ``ConfigError`` naming the variable."""
    name = next((name for name in ENDPOINT_VARIABLES if env.get(name)), None)
    if name is None:
        return None
    try:
        return check_endpoint_url(env[name])
    except ValueError as exc:
        raise ConfigError(f"environment {name}", None, str(exc)) from None


def _with_endpoint_from(env: Mapping[str, str], main: MainConfig) -> MainConfig:
    """``recording.endpoint_url`` from the environment when the file leaves it out."""
    recording = main.recording
    endpoint = None if recording.endpoint_url is not None else endpoint_from(env)
    if endpoint is None:
        return main
    recording = recording.model_copy(update={"endpoint_url": endpoint})
    return main.model_copy(update={"recording": recording})


def _route_files(routes_dir: Path, source: str) -> list[Path]:
    try:
        found = routes_dir.is_dir()
    except OSError as exc:  # is_dir() only swallows "does not exist"; say a name too long
        raise ConfigError(source, "routes_dir", f"cannot read: {exc.strerror or exc}") from None
    if not found:
        raise ConfigError(source, "routes_dir", f"{str(routes_dir)!r} is not a directory")
    return sorted([*routes_dir.glob("*.yaml"), *routes_dir.glob("*.yml")])


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a value its constructors cannot build
    (``!!int x``, a date in month 13, an integer of 5,000 digits) is a YAML error at
    its line: PyYAML lets whatever Python raised (``ValueError``, ``KeyError``) escape."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (yaml.YAMLError, RecursionError):
            raise
        except Exception as exc:
            kind = str(node.tag).rpartition(":")[2]
            raise yaml.constructor.ConstructorError(
                None, None, f"invalid {kind} value ({exc})", node.start_mark
            ) from None


def _read_yaml(path: Path, source: str) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(source, None, f"cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        byte = raw[exc.start]
        raise ConfigError(source, None, f"not UTF-8: line {line}: byte 0x{byte:02x}") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, None, f"invalid YAML: {where}{problem}") from None
    except RecursionError:
        raise ConfigError(source, None, "invalid YAML: nested too deep") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(source, None, f"must be a mapping, got {type(data).__name__}")
    return data


def _expand(
    value: Any,
    env: Mapping[str, str],
    source: str,
    field: str,
    parents: frozenset[int] = frozenset(),
) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string value.

    ``parents`` holds the containers above ``value``: a YAML alias can make a list
    contain itself (``&a [*a]``), which no config means and no walk would finish."""
    if isinstance(value, dict | list):
        if id(value) in parents:
            raise ConfigError(source, field or None, "contains itself (a recursive YAML alias)")
        parents = parents | {id(value)}
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(source, field or None, f"environment variable {name} is not set")

        return _ENV_REFERENCE.sub(substitute, value)
    if isinstance(value, dict):
        return {
            key: _expand(item, env, source, _join(field, str(key)), parents)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [
            _expand(item, env, source, f"{field}[{index}]", parents)
            for index, item in enumerate(value)
        ]
    return value


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


_M = typing.TypeVar("_M", bound=BaseModel)


def _validate(model: type[_M], raw: dict[str, Any], source: str) -> _M:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        loc = tuple(error["loc"])
        located = (error.get("ctx") or {}).get("error")
        if isinstance(located, FieldError):
            loc = (*loc, *located.loc)
        if error["type"] == "invalid_key" or loc[-1:] == ("[key]",):
            # A bad mapping key: pydantic spells it its own way (``true:`` as 1, a date as
            # its repr) and may add a "[key]" marker; the file has the key itself.
            loc = (*loc[: -2 if loc[-1:] == ("[key]",) else -1], error["input"])
        raise ConfigError(source, _field_path(loc, raw), _describe(model, error)) from None


def _field_path(loc: tuple[Any, ...], raw: Any) -> str | None:
    """``routes[0].match``, spelled as ``_expand`` spells it. ``raw`` tells a list index
    from a mapping key that YAML read as a number (``404:``): pydantic's ``loc`` does not."""
    path, node = "", raw
    for part in loc:
        in_list = isinstance(part, int) and not isinstance(node, dict)
        path = f"{path}[{part}]" if in_list else _join(path, str(part))
        try:
            node = node[part] if isinstance(node, dict | list | tuple) else None
        except (LookupError, TypeError):
            node = None
    return path or None


def _describe(model: type[BaseModel], error: Mapping[str, Any]) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    given = error.get("input")
    if kind == "extra_forbidden":
        return _unknown_key_message(model, tuple(error["loc"]))
    if kind == "missing":
        return "required"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    bounds = {
        "greater_than": ("must be greater than", "gt"),
        "greater_than_equal": ("must be at least", "ge"),
        "less_than": ("must be less than", "lt"),
        "less_than_equal": ("must be at most", "le"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        bound = ctx[key]
        shown = f"{bound:g}" if isinstance(bound, float) else bound
        return f"{words} {shown}, got {given!r}"
    if kind == "string_pattern_mismatch":
        return (
            "must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit, "
            f"got {given!r}"
        )
    return f"{error['msg'][0].lower()}{error['msg'][1:]}, got {given!r}"


def _unknown_key_message(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """Name the allowed keys, and the closest one when it looks like a typo."""
    owner = _model_at(model, loc[:-1])
    allowed = sorted(owner.model_fields) if owner else []
    message = "unknown key" + did_you_mean(str(loc[-1]), allowed)
    if allowed:
        message += f"; allowed: {', '.join(allowed)}"
    return message


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = _unwrap(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """``tuple[X, ...]`` / ``X | None`` -> ``X``, so the walk can continue into a model."""
    for arg in typing.get_args(annotation) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return annotation


def _check_route_set(routes: list[RouteConfig], sources: list[str], fields: list[str]) -> None:
    """Names and (prefix, method) claims are unique, A/B shares of one layer do not
    overlap; ``fields`` locates each route in its source (``routes[1]`` inline in the
    main file, ``""`` for a file of its own)."""
    experiments = [
        (route.name, route.ab, source, field)
        for route, source, field in zip(routes, sources, fields, strict=True)
        if route.ab is not None
    ]
    for index, (_, _, source, field) in enumerate(experiments):
        try:
            check_layers((name, spec) for name, spec, _, _ in experiments[: index + 1])
        except ValueError as exc:
            raise ConfigError(source, _join(field, "ab.layer_share"), str(exc)) from None
    names: dict[str, str] = {}
    claims: dict[tuple[str, str | None], str] = {}
    for route, source, field in zip(routes, sources, fields, strict=True):
        if route.name in names:
            raise ConfigError(
                source,
                _join(field, "name"),
                f"route name {route.name!r} is already used in {names[route.name]}",
            )
        names[route.name] = source
        if route.match.grpc is not None:
            grpc_key: tuple[str, str | None] = ("grpc:" + route.match.grpc, None)
            if grpc_key in claims:
                raise ConfigError(
                    source,
                    _join(field, "match.grpc"),
                    f"{route.match.grpc!r} is already matched by {claims[grpc_key]}",
                )
            claims[grpc_key] = f"route {route.name!r} ({source})"
            continue
        assert route.match.path_prefix is not None
        methods: tuple[str | None, ...] = route.match.methods or (None,)
        for method in methods:
            key = (route.match.path_prefix, method)
            if key in claims:
                what = f"methods {method}" if method else "all methods"
                raise ConfigError(
                    source,
                    _join(field, "match"),
                    f"path_prefix {route.match.path_prefix!r} with {what} is already "
                    f"matched by {claims[key]}",
                )
            claims[key] = f"route {route.name!r} ({source})"


def _check_grpc_listener(
    main: MainConfig, routes: list[RouteConfig], sources: list[str], fields: list[str]
) -> None:
    """A gRPC route is served only on ``grpc_listen`` (one without it would never
    match), and needs the ``grpc`` extra installed."""
    for route, source, field in zip(routes, sources, fields, strict=True):
        if not route.is_grpc:
            continue
        if main.grpc_listen is None:
            raise ConfigError(
                source,
                _join(field, "match.grpc"),
                "a gRPC route needs grpc_listen (host:port) in the main config",
            )
        missing = [name for name in ("grpc", "google.protobuf") if not _importable(name)]
        if missing:
            raise ConfigError(
                source,
                _join(field, "match.grpc"),
                f"gRPC routes need {' and '.join(missing)}: pip install 'shadowproxy-ml[grpc]'",
            )


def _with_descriptor_set(route: RouteConfig, source: str, field: str) -> RouteConfig:
    """The route with its ``grpc_descriptor_set`` read (relative to the file the route is
    in) and checked against the service it matches, once, here."""
    if route.grpc_descriptor_set is None or route.match.grpc is None:
        return route
    # Imported here: protobuf is needed only once a route names a descriptor set (and
    # _check_grpc_listener has made sure it is installed).
    from shadowproxy.compare import grpc_messages

    where = _join(field, "grpc_descriptor_set")
    path = Path(source).parent / route.grpc_descriptor_set
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            source, where, f"{str(path)!r} cannot be read: {exc.strerror or exc}"
        ) from None
    try:
        grpc_messages.load(data, route.match.grpc)
    except ValueError as exc:
        raise ConfigError(source, where, f"{str(path)!r} {exc}") from None
    return route.with_descriptor_set(data)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package is missing
        return False


def with_overrides(config: Config, **fields: str | None) -> Config:
    """The config with main-file fields replaced (command-line flags), re-validated."""
    update = {key: value for key, value in fields.items() if value is not None}
    if not update:
        return config
    raw = config.main.model_dump()
    raw.update(update)
    main = _validate(MainConfig, raw, "command line")
    return config.model_copy(update={"main": main})
