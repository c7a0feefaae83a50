"""Configuration: YAML files in, frozen validated objects out.

The main file names the listeners, the recording target and where routes live; each
route (one per file under ``routes_dir``, or inline under ``routes``) names its
production upstream and its shadows. Everything is parsed here once, at the edge
(``files``): environment variables are expanded, unknown keys are rejected (a typo must
not pass silently) and every error names the file, the field path and what is wrong,
e.g.::

    config/routes/price.yaml: shadows[0].sample_rate: must be between 0 and 1, got 1.5

``models`` holds the frozen objects the rest of the code sees. No code below this
package reads YAML, environment variables or defaults.
"""

from shadowproxy.config.files import (
    ENDPOINT_VARIABLES,
    endpoint_from,
    load_config,
    with_overrides,
)
from shadowproxy.config.models import (
    HTTP_METHODS,
    ByteCount,
    CircuitBreakerConfig,
    Config,
    GrpcTlsConfig,
    MainConfig,
    MatchConfig,
    PoolConfig,
    RecordConfig,
    RecordingConfig,
    RouteConfig,
    Seconds,
    ShadowConfig,
    ShadowHeadersConfig,
    UpstreamConfig,
    Url,
    canary_refusal,
    check_endpoint_url,
)

__all__ = [
    "ENDPOINT_VARIABLES",
    "HTTP_METHODS",
    "ByteCount",
    "CircuitBreakerConfig",
    "Config",
    "GrpcTlsConfig",
    "MainConfig",
    "MatchConfig",
    "PoolConfig",
    "RecordConfig",
    "RecordingConfig",
    "RouteConfig",
    "Seconds",
    "ShadowConfig",
    "ShadowHeadersConfig",
    "UpstreamConfig",
    "Url",
    "canary_refusal",
    "check_endpoint_url",
    "endpoint_from",
    "load_config",
    "with_overrides",
]
