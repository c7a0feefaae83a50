"""Outbound gRPC channels: one per production upstream, one per shadow.

A ``grpc.aio`` channel multiplexes calls over HTTP/2 connections, so a channel is the
gRPC form of a pool. Each channel here keeps its connections to itself
(``grpc.use_local_subchannel_pool``): by default gRPC shares connections between
channels to the same address, and a shadow black-holing its calls on a connection
production also uses would hold up production. Retries are off: a proxy that retried
would send a model the same request twice, and a shadow's failure is data.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

import grpc


def target(url: str) -> tuple[str, bool]:
    """``(host:port, tls)`` of a validated ``grpc://`` or ``grpcs://`` URL."""
    parts = urlsplit(url)
    tls = parts.scheme == "grpcs"
    assert parts.hostname is not None  # config validation guarantees a host
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{parts.port or (443 if tls else 80)}", tls


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.enable_retries", 0),
    ]


class Channels:
    """Every open channel of one server, so none is left open at the end."""

    def __init__(self) -> None:
        self._open: set[grpc.aio.Channel] = set()

    def open(self, url: str, max_message_bytes: int) -> grpc.aio.Channel:
        address, tls = target(url)
        options = channel_options(max_message_bytes)
        if tls:
            credentials = grpc.ssl_channel_credentials()
            channel = grpc.aio.secure_channel(address, credentials, options=options)
        else:
            channel = grpc.aio.insecure_channel(address, options=options)
        self._open.add(channel)
        return channel

    async def close(self, channels: Iterable[grpc.aio.Channel] | None = None) -> None:
        """Close ``channels`` (by default every one still open); calls on them end."""
        for channel in list(self._open if channels is None else channels):
            self._open.discard(channel)
            await channel.close(grace=None)
