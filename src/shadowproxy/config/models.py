"""The configuration's models: frozen, validated, with unknown keys refused.

The main file names the listeners, the recording target and where routes live; each
route (one per file under ``routes_dir``, or inline under ``routes``) names its
production upstream and its shadows. Everything is parsed here once, at the edge:
environment variables are expanded, unknown keys are rejected (a typo must not pass
silently) and every error names the file, the field path and what is wrong, e.g.::

    config/routes/price.yaml: shadows[0].sample_rate: must be between 0 and 1, got 1.5

No code below this module reads YAML, environment variables or defaults.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from shadowproxy.compare import jsonpath
from shadowproxy.compare.spec import OPEN_INFERENCE_SERVICE, CompareConfig
from shadowproxy.experiments.chaos import ChaosRule, FieldError, unknown_target
from shadowproxy.experiments.promotion import Promotion
from shadowproxy.experiments.spec import CHECK_SHADOW, ABSpec, CanarySpec, Mode
from shadowproxy.monitor.spec import MonitorConfig
from shadowproxy.validation import (
    GRPC_SCHEMES,
    NAME_PATTERN,
    FrozenModel,
    check_unique,
    check_upstream_url,
    check_url,
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
    grpc_descriptor_set: str | None = None
    """gRPC routes of a service other than Open Inference: a protobuf descriptor set,
    the file ``protoc --include_imports --descriptor_set_out=FILE`` writes (relative to
    the file the route is in). Each method's answer is decoded as the output type the service
    declares in it, to proto3 JSON with the ``.proto`` field names, and compared under
    ``compare:`` like an HTTP body; without it the message bytes compare ``exact``.
    Read once at load: a missing file, a file that is not a set, or a service or
    method it does not define is a config error."""

    _descriptor_set_bytes: bytes | None = PrivateAttr(default=None)

    @property
    def is_grpc(self) -> bool:
        return self.match.grpc is not None

    @property
    def grpc_messages(self) -> tuple[bytes, str] | None:
        """(the descriptor set's bytes, ``match.grpc``) once the loader has read
        ``grpc_descriptor_set`` (``config.files``), for the comparer to type answers by."""
        if self._descriptor_set_bytes is None or self.match.grpc is None:
            return None
        return self._descriptor_set_bytes, self.match.grpc

    def with_descriptor_set(self, data: bytes) -> RouteConfig:
        """This route with ``grpc_descriptor_set``'s bytes, as read and checked."""
        route = self.model_copy()
        route._descriptor_set_bytes = data
        return route

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
        if grpc and self.monitor is not None:
            raise FieldError(("monitor",), "watches HTTP routes only, not gRPC ones")
        if self.grpc_descriptor_set is not None:
            self._check_descriptor_set()
        return self

    def _check_descriptor_set(self) -> None:
        if not self.is_grpc:
            raise FieldError(("grpc_descriptor_set",), "applies to gRPC routes only")
        assert self.match.grpc is not None
        if self.match.grpc.partition("/")[0] == OPEN_INFERENCE_SERVICE:
            raise FieldError(
                ("grpc_descriptor_set",),
                f"{OPEN_INFERENCE_SERVICE} is decoded built in (compare.prediction: "
                "open-inference); leave grpc_descriptor_set out",
            )

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
    writer_start: Literal["fork", "spawn"] = "fork"
    """How ``serve`` starts the writer process. ``fork``: forked by a fork server, a copy
    of the proxy made before its event loop starts, so the writer shares the modules
    both import (3 to 6 MiB less PSS per sidecar, net of the fork server's own); a
    restart is forked the same way. ``spawn``: a fresh Python interpreter each time.
    ``serve`` called from Python (embedding) spawns."""
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


def canary_refusal(config: Config) -> str | None:
    """Why ``serve --workers N`` cannot serve ``config`` (at start or on a reload): a
    canary's decisions are taken in one process. None when it can."""
    canaries = [route.name for route in config.routes if route.canary is not None]
    if not canaries:
        return None
    return (
        f"route(s) {', '.join(canaries)} run a canary, whose decisions are taken in one "
        "process: serve them with --workers 1"
    )
