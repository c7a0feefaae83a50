"""The gRPC side of one server, put together: listener, handler, snapshot, channels.

``app.Server`` makes one when ``grpc_listen`` is set (only then is ``grpcio``
imported) and drives it through the same lifecycle as the HTTP listener: start,
reload (``check_reloadable`` then ``swap``), drain (health ``NOT_SERVING``, no new
calls, calls in flight finish) and the channels closed last.
"""

from __future__ import annotations

from pathlib import Path

from shadowproxy.config import Config
from shadowproxy.errors import ConfigError
from shadowproxy.grpc.channels import Channels
from shadowproxy.grpc.server import GrpcServer
from shadowproxy.metrics import GRPC_REJECT_REASONS, Metrics
from shadowproxy.proxy.grpc_handler import GrpcProxyHandler
from shadowproxy.proxy.grpc_runtime import GrpcRetirer, build_grpc, max_message_bytes
from shadowproxy.proxy.tee import ShadowRunner, Tee


class GrpcListener:
    def __init__(self, config: Config, metrics: Metrics, tee: Tee) -> None:
        main = config.main
        assert main.grpc_listen is not None
        # Read now: a missing file is a config error before anything listens.
        self._tls = None
        if main.grpc_tls is not None:
            base = Path(config.source).parent
            self._tls = (
                _read(base, main.grpc_tls.key_file, config.source, "grpc_tls.key_file"),
                _read(base, main.grpc_tls.cert_file, config.source, "grpc_tls.cert_file"),
            )
        self._config = config
        self._metrics = metrics
        self._channels = Channels()
        self._retirer = GrpcRetirer(self._channels)
        self.handler = GrpcProxyHandler(build_grpc(config, metrics, self._channels), tee, metrics)
        rejected = metrics.rejected_requests
        for reason in GRPC_REJECT_REASONS:
            rejected.labels(reason)
        self.server = GrpcServer(
            self.handler,
            max_concurrent_calls=main.grpc_max_concurrent_calls,
            max_concurrent_streams=main.grpc_max_concurrent_streams,
            max_message_bytes=max_message_bytes(config),
            on_reject=lambda reason: rejected.labels(reason).inc(),
        )

    async def start(self) -> tuple[str, int]:
        listen = self._config.main.grpc_listen
        assert listen is not None
        return await self.server.listen(listen, self._tls)

    def runners(self) -> dict[str, list[ShadowRunner]]:
        return self.handler.snapshot.runners()

    def check_reloadable(self, config: Config) -> None:
        """The listener's hard limit is set at start: a route may not raise past it."""
        limit = self.server.max_message_bytes // 2
        for route, source in zip(config.routes, config.route_sources, strict=True):
            if route.is_grpc and route.grpc_max_message_bytes > limit:
                raise ConfigError(
                    source,
                    "grpc_max_message_bytes",
                    f"above {limit}, the largest the gRPC listener took at start; restart to apply",
                )

    def swap(self, config: Config) -> None:
        old = self.handler.snapshot
        new = build_grpc(config, self._metrics, self._channels, previous=old)
        self.handler.snapshot = new
        self._config = config
        self._retirer.retire(old, new)

    async def close(self, grace_s: float) -> None:
        """Health says ``NOT_SERVING``, no new calls; those in flight get ``grace_s``."""
        await self.server.close(grace_s)

    async def close_channels(self) -> None:
        await self._retirer.close()
        await self._channels.close()


def _read(base: Path, name: str, source: str, field: str) -> bytes:
    path = base / name
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(source, field, f"cannot read {str(path)!r}: {exc.strerror}") from None
