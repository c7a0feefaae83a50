"""Configuration: YAML files in, frozen validated objects out.

The main file names the listeners, the recording target and where routes live; each
route (one per file under ``routes_dir``, or inline under ``routes``) names its
production upstream and its shadows. Everything is parsed here once, at the edge:
environment variables are expanded, unknown keys are rejected (a typo must not pass
silently) and every error names the file, the field path and what is wrong, e.g.::

    config/routes/price.yaml: shadows[0].sample_rate: must be between 0 and 1, got 1.5

No code below this module reads YAML, environment variables or defaults.
"""

from __future__ import annotations

import importlib.util
import os
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from shadowproxy.compare import jsonpath
from shadowproxy.compare.spec import CompareConfig
from shadowproxy.errors import ConfigError
from shadowproxy.experiments.chaos import ChaosRule, FieldError, unknown_target
from shadowproxy.experiments.promotion import Promotion
from shadowproxy.experiments.spec import CHECK_SHADOW, ABSpec, CanarySpec, Mode, check_layers
from shadowproxy.monitor.spec import MonitorConfig
from shadowproxy.validation import (
    GRPC_SCHEMES,
    NAME_PATTERN,
    FrozenModel,
    check_unique,
    check_upstream_url,
    check_url,
    did_you_mean,
    is_header_name,
)

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _check_listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"must be host:port (e.g. 127.0.0.1:8080), got {value!r}")
    return value


def _check_rate(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"must be between 0 and 1, got {value}")
    return value


Url = str
"""``scheme://host[:port]``, checked by ``check_url`` in each model that has one."""
Seconds = Annotated[float, Field(gt=0)]
ByteCount = Annotated[int, Field(ge=0)]


class CircuitBreakerConfig(FrozenModel):
    """When a shadow keeps failing, stop paying for copies it cannot answer."""

    failures: Annotated[int, Field(ge=1)] = 5
    """Consecutive errors or timeouts after which the circuit opens and copies are skipped
    (reason ``circuit_open``)."""
    backoff_s: Seconds = 5.0
    """How long an open circuit skips copies before one probe is sent; a good probe closes it."""
    max_backoff_s: Seconds = 60.0
    """Each failed probe doubles the backoff, up to this."""


class UpstreamConfig(FrozenModel):
    url: Url
    """``scheme://host[:port]``; the request path is forwarded as is."""
    timeout_s: Seconds = 10.0
    """Time to production's response headers (else 504), then per read."""

    _url = field_validator("url")(check_upstream_url)


def _check_methods(value: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    upper = tuple(method.upper() for method in value)
    unknown = sorted(set(upper) - HTTP_METHODS)
    if unknown:
        raise ValueError(f"unknown HTTP method {', '.join(unknown)}")
    if not upper:
        raise ValueError("must name at least one method, or be left out to match all")
    return upper


class ShadowHeadersConfig(FrozenModel):
    """Header rules for one shadow's copies; production's request is never changed.

    ``drop`` names are matched case-insensitively; ``set`` replaces the client's value.
    """

    drop: tuple[str, ...] = ()
    """Headers removed from this shadow's copies (matched case-insensitively), e.g.
    ``[Authorization, Cookie]`` for a shadow outside production's trust boundary."""
    set: dict[str, str] = Field(default_factory=dict)
    """Headers set on this shadow's copies, replacing the client's value (e.g. ``{X-Env:
    shadow}``)."""

    @field_validator("drop")
    @classmethod
    def _drop(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not is_header_name(name):
                raise ValueError(f"{name!r} is not a valid header name")
        return value

    @field_validator("set")
    @classmethod
    def _set(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not is_header_name(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if any(char in text for char in "\r\n\0"):
                raise ValueError(f"the value for {name!r} contains CR, LF or NUL")
        return value


class ShadowConfig(FrozenModel):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    """Letters, digits, ``.``, ``_``, ``-``; used in metric labels and recorded rows."""
    url: Url
    """``scheme://host[:port]``; the request path is forwarded as is."""
    sample_rate: float = 1.0
    """Share of requests copied to this shadow, 0..1."""
    sample_key: str | None = None
    """A header whose value makes sampling sticky per user (a hash of the shadow's name and the
    value); default: random per request."""
    timeout_s: Seconds = 30.0
    """Total time for the copy, body included; past it the outcome is ``timeout``."""
    max_in_flight: Annotated[int, Field(ge=1)] = 64
    """Copies in flight at once, and the size of this shadow's own connection pool; copies
    beyond it are dropped and counted, never queued."""
    role: Literal["candidate", "baseline"] = "candidate"
    """``candidate`` (the model under test) or ``baseline`` (a second replica of production:
    its disagreement is the noise floor)."""
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()
    """When a shadow keeps failing, stop paying for copies it cannot answer."""
    methods: tuple[str, ...] | None = None
    """Only requests with these methods are copied (default: all the route takes). A
    request whose method a shadow does not take is not sampled for it: no copy, no row."""
    headers: ShadowHeadersConfig = ShadowHeadersConfig()
    """Header rules for this shadow's copies only; ``X-Shadow-Request: true`` is always set."""

    _url = field_validator("url")(check_upstream_url)
    _rate = field_validator("sample_rate")(_check_rate)
    _methods = field_validator("methods")(_check_methods)


_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_GRPC_NAME = re.compile(rf"{_IDENT}(\.{_IDENT})*(/{_IDENT})?")


class MatchConfig(FrozenModel):
    """HTTP: ``path_prefix`` (and ``methods``). gRPC: ``grpc``, a service
    (``inference.GRPCInferenceService``: every method) or one method
    (``inference.GRPCInferenceService/ModelInfer``), served on ``grpc_listen``."""

    path_prefix: str | None = None
    """HTTP: requests whose path starts with this; the longest matching prefix wins."""
    methods: tuple[str, ...] | None = None
    """HTTP: only these methods (default: all). Among routes with the same prefix, one
    naming the method beats one taking all methods."""
    grpc: str | None = None
    """gRPC: a service (every method) or one ``service/method``, served on
    ``grpc_listen``."""

    @field_validator("path_prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"must start with '/', got {value!r}")
        return value

    @field_validator("grpc")
    @classmethod
    def _grpc(cls, value: str | None) -> str | None:
        if value is not None and not _GRPC_NAME.fullmatch(value):
            raise ValueError(
                "must be package.Service or package.Service/Method "
                f"(e.g. inference.GRPCInferenceService/ModelInfer), got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> MatchConfig:
        if (self.path_prefix is None) == (self.grpc is None):
            raise ValueError("needs exactly one of path_prefix (HTTP) or grpc (gRPC)")
        if self.grpc is not None and self.methods is not None:
            raise FieldError(("methods",), "applies to HTTP routes only; grpc names the method")
        return self

    _methods = field_validator("methods")(_check_methods)


class RecordConfig(FrozenModel):
    bodies: bool = True
    """``false`` keeps metadata, predictions and timings only."""
    max_body_bytes: ByteCount = 65536
    """Cap per recorded body; longer bodies are cut and flagged ``<body>_truncated``."""
    redact: tuple[str, ...] = ()
    """JSON paths replaced by ``"[redacted]"`` in the request and both answers before anything
    is compared or written (e.g. ``$.instances[*].email``)."""

    @field_validator("redact")
    @classmethod
    def _redact_paths(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # A path that does not parse would redact nothing: refuse it at load time.
        for path in value:
            jsonpath.parse(path)
        return value


class RouteConfig(FrozenModel):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    """Letters, digits, ``.``, ``_``, ``-``; used in metric labels and partition paths."""
    match: MatchConfig
    """Which requests this route takes."""
    production: UpstreamConfig
    """The upstream whose answer the client gets."""
    shadows: tuple[ShadowConfig, ...] = ()
    """Upstreams that get a copy of sampled requests; their answers never reach the client."""
    max_body_bytes: ByteCount = 10 * 1024 * 1024
    """Request bodies up to this are buffered and copied; a larger one is streamed to
    production only, and the request's shadows are skipped (``body_too_large``)."""
    max_capture_bytes: ByteCount = 1024 * 1024
    """Response bytes kept per side for comparison and recording."""
    max_decoded_bytes: ByteCount = 16 * 1024 * 1024
    """Most bytes one compressed body (``Content-Encoding``) may decode to for comparison
    and recording; past it the pair is incomparable (a 1 MiB gzip can hold 1 GiB)."""
    record: RecordConfig = RecordConfig()
    """What is written to Parquet."""
    compare: CompareConfig = CompareConfig()
    """How production's and the shadows' answers are judged."""
    chaos: tuple[ChaosRule, ...] = ()
    """Faults injected on purpose (``shadowproxy.experiments.chaos``); empty in normal operation."""
    mode: Mode = "shadow"
    """``shadow``: production answers, shadows get copies. ``canary`` and ``ab``: other
    upstreams answer a share of the clients for real (``shadowproxy.experiments``)."""
    canary: CanarySpec | None = None
    """Required with ``mode: canary``, refused otherwise."""
    ab: ABSpec | None = None
    """Required with ``mode: ab``, refused otherwise."""
    monitor: MonitorConfig | None = None
    """Watching inputs, predictions and invariants without labels (``shadowproxy.monitor``)."""
    promotion: Promotion = Promotion()
    """The pre-registered criteria ``shadowproxy report`` decides on (see
    ``experiments.promotion``); the documented defaults when absent."""
    grpc_max_message_bytes: Annotated[int, Field(ge=1)] = 4 * 1024 * 1024
    """gRPC routes: the largest message taken from the client or an upstream (gRPC's own
    default); a larger request is refused with ``RESOURCE_EXHAUSTED`` before any
    upstream sees it."""

    @property
    def is_grpc(self) -> bool:
        return self.match.grpc is not None

    @model_validator(mode="after")
    def _protocol(self) -> RouteConfig:
        """A gRPC route calls gRPC upstreams and an HTTP route HTTP ones: the proxy does
        not translate between the two."""
        grpc = self.is_grpc
        urls: list[tuple[tuple[str | int, ...], str]] = [
            (("production", "url"), self.production.url)
        ]
        urls += [(("shadows", i, "url"), shadow.url) for i, shadow in enumerate(self.shadows)]
        for loc, url in urls:
            if url.partition(":")[0] in GRPC_SCHEMES and not grpc:
                raise FieldError(loc, f"a grpc:// upstream needs match.grpc, got {url!r}")
            if url.partition(":")[0] not in GRPC_SCHEMES and grpc:
                raise FieldError(loc, f"a gRPC route needs a grpc:// or grpcs:// URL, got {url!r}")
        if grpc and self.mode != "shadow":
            raise FieldError(("mode",), f"gRPC routes serve in mode shadow only, got {self.mode}")
        return self

    @model_validator(mode="after")
    def _mode_block(self) -> RouteConfig:
        blocks = {"canary": self.canary, "ab": self.ab}
        for block, value in blocks.items():
            if value is not None and self.mode != block:
                raise ValueError(f"a {block}: block needs mode: {block} (mode is {self.mode})")
        if self.mode in blocks and blocks[self.mode] is None:
            raise ValueError(f"mode: {self.mode} needs a {self.mode}: block")
        return self

    @field_validator("chaos")
    @classmethod
    def _chaos_targets(
        cls, value: tuple[ChaosRule, ...], info: ValidationInfo
    ) -> tuple[ChaosRule, ...]:
        shadows = info.data.get("shadows")
        problem = unknown_target(value, [s.name for s in shadows]) if shadows is not None else None
        if problem is not None:
            raise problem
        return value

    @model_validator(mode="after")
    def _unique_shadows(self) -> RouteConfig:
        check_unique((shadow.name for shadow in self.shadows), "shadow name", " in this route")
        return self

    @model_validator(mode="after")
    def _check_shadow_name_free(self) -> RouteConfig:
        if self.mode != "canary":
            return self
        for index, shadow in enumerate(self.shadows):
            if shadow.name == CHECK_SHADOW:
                raise FieldError(
                    ("shadows", index, "name"),
                    f"{CHECK_SHADOW!r} is reserved on canary routes: the disagreement "
                    "guardrail's copies to production are recorded under it; rename this "
                    "shadow",
                )
        return self


class RecordingConfig(FrozenModel):
    dir: str = "shadow-logs"
    """Where pairs, exposures and feedback are recorded: a path relative to the working
    directory, or an ``s3://``, ``gs://`` or ``file://`` URI."""
    flush_interval_s: Seconds = 5.0
    """A recorded file is closed at most this long after its first row..."""
    max_rows_per_file: Annotated[int, Field(ge=1)] = 100_000
    """... or when it has this many rows, whichever comes first."""
    max_pending_records: Annotated[int, Field(ge=1)] = 100_000
    """Records buffered in memory for the writer; beyond this new ones are dropped and counted
    (``queue_full``): production never waits."""
    close_timeout_s: Seconds = 10.0
    """At shutdown, how long failing writes are retried before the rest is spilled
    (``spill_dir``) or dropped."""
    writer: Literal["process", "thread"] = "process"
    """``process``: redaction, comparison and Parquet writing run in a child process,
    so they never compete with the event loop for the GIL. ``thread``: in this
    process (one interpreter, no child; costs production latency under load)."""
    endpoint_url: str | None = None
    """An S3-compatible endpoint for an ``s3://`` dir, as a full URL
    (``http://minio:9000``); default ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``
    from the environment, else AWS itself. Credentials are never set here: they come
    from the standard AWS chain (environment, profile, instance or pod role)."""
    region: str | None = None
    """The bucket's region; default the AWS chain's (``AWS_REGION``, profile), else
    looked up from the bucket."""
    max_buffer_bytes: Annotated[int, Field(ge=1024 * 1024)] = 64 * 1024 * 1024
    """Bytes of records the writer holds in memory (queued, in open files, sealed files
    waiting for the store); records beyond it are dropped and counted."""
    spill_dir: str | None = None
    """A local directory for sealed files the store refuses, so an outage costs disk
    rather than memory and survives a restart (uploaded by the next writer)."""
    spill_max_bytes: ByteCount = 1024 * 1024 * 1024
    """Bytes ``spill_dir`` may hold; past it, refused files stay in memory."""

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_url(cls, value: str | None) -> str | None:
        return None if value is None else check_endpoint_url(value)

    @field_validator("region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z0-9-]{2,40}", value):
            raise ValueError(f"must be a region name like us-east-1, got {value!r}")
        return value


def check_endpoint_url(value: str) -> str:
    """A full URL with its scheme and no credentials (a secret in a URL reaches logs)."""
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in ("http", "https") or not rest.strip("/"):
        # The value is not echoed: a mistyped endpoint may hold a key.
        raise ValueError("must be a URL with its scheme, like http://minio:9000")
    if "@" in rest.split("/", 1)[0]:
        raise ValueError("must not carry credentials: use the AWS environment or profile")
    return value.rstrip("/")


class PoolConfig(FrozenModel):
    """Connection pool of the production upstreams (each shadow has its own, sized by
    ``max_in_flight``, so a black-holed shadow cannot take production's connections)."""

    max_connections: Annotated[int, Field(ge=1)] = 1000
    """Connections to the production upstreams, all routes together."""
    keepalive_timeout_s: Seconds = 30.0
    """Idle keep-alive time of pooled production connections."""


class GrpcTlsConfig(FrozenModel):
    cert_file: str
    """PEM certificate chain the gRPC listener presents (relative to the main file)."""
    key_file: str
    """PEM private key of that certificate (relative to the main file)."""


class MainConfig(FrozenModel):
    listen: str = "127.0.0.1:8080"
    """Where clients send requests (``host:port``)."""
    admin_listen: str = "127.0.0.1:9090"
    """The admin listener: ``/healthz``, ``/readyz``, ``/metrics``, ``/routes``, ``/reload``,
    ``/feedback``, ``/experiments``."""
    default_upstream: Url | None = None
    """Unmatched requests pass through here, unshadowed; without it they get a 404 JSON error."""
    default_upstream_timeout_s: Seconds = 30.0
    """Response-header timeout for the default upstream."""
    routes_dir: str | None = None
    """Every ``*.yaml``/``*.yml`` file in it (relative to the main file) is one route."""
    routes: tuple[RouteConfig, ...] = ()
    """Routes inline, each with the schema of a route file."""
    recording: RecordingConfig = RecordingConfig()
    """Where and how pairs are recorded."""
    state_dir: str = "shadowproxy-state"
    """Local directory for canary state files, which survive restarts."""
    admin_token: str | None = None
    """Bearer token required on every admin endpoint but ``/healthz``, ``/readyz`` and
    ``/metrics`` (``Authorization: Bearer <token>``, else 401). Write it as
    ``${SHADOWPROXY_ADMIN_TOKEN}``; an empty value is an error."""
    drain_timeout_s: Seconds = 10.0
    """At shutdown, how long in-flight shadow copies may finish; the rest are cancelled and
    recorded as errors."""
    shutdown_timeout_s: Seconds = 30.0
    """At shutdown, how long in-flight production requests may finish."""
    max_header_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024
    """Request line plus headers; a client sending more gets 431 and the connection is
    closed."""
    client_header_timeout_s: Seconds = 30.0
    """A request head must arrive within this, else 408 (slowloris); an idle connection that
    sends nothing is closed after it."""
    client_keepalive_timeout_s: Seconds = 75.0
    """An idle client keep-alive connection is closed after this."""
    client_body_timeout_s: Seconds = 60.0
    """Longest wait for the next piece of a request body; a stalled upload gets 408 and its row
    says so."""
    upstream_pool: PoolConfig = PoolConfig()
    """Connection pool of the production upstreams (each shadow has its own, sized by
    ``max_in_flight``)."""
    grpc_listen: str | None = None
    """Where gRPC routes are served (HTTP/2); required as soon as one route matches gRPC."""
    grpc_tls: GrpcTlsConfig | None = None
    """Serve ``grpc_listen`` with TLS (cert and key files); cleartext HTTP/2 without it."""
    grpc_max_concurrent_calls: Annotated[int, Field(ge=1)] = 1000
    """Calls the gRPC listener serves at once, all connections together; more are
    refused with ``RESOURCE_EXHAUSTED`` and counted."""
    grpc_max_concurrent_streams: Annotated[int, Field(ge=1)] = 1000
    """HTTP/2 streams one client connection may open at once (the client queues more)."""

    _listen = field_validator("listen", "admin_listen")(_check_listen)

    @field_validator("grpc_listen")
    @classmethod
    def _grpc_listen(cls, value: str | None) -> str | None:
        return None if value is None else _check_listen(value)

    @field_validator("default_upstream")
    @classmethod
    def _default_upstream(cls, value: str | None) -> str | None:
        return None if value is None else check_url(value)

    @field_validator("admin_token")
    @classmethod
    def _admin_token(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("is empty; set a token, or leave admin_token out")
        return value


class Config(FrozenModel):
    """Everything the proxy runs on: the main file plus its routes, in load order."""

    source: str
    main: MainConfig
    routes: tuple[RouteConfig, ...]
    route_sources: tuple[str, ...]
    """For each route, the file it came from (error messages and ``/routes``)."""


# --- loading -----------------------------------------------------------------------

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
