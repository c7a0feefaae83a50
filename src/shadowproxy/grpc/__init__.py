"""The gRPC wire level, shaped like ``shadowproxy.http``.

``server`` (the listener: HTTP/2, generic handlers that pass raw message bytes, the
health service), ``channels`` (outbound channels, one per upstream), ``metadata`` and
``codes`` (pure rules: which metadata is forwarded, status names and their HTTP
equivalents). The request path on top of them is ``shadowproxy.proxy.grpc_handler``.

Everything here but ``metadata`` and ``codes`` needs ``grpcio`` (the ``grpc`` extra),
imported only when ``grpc_listen`` is set.
"""
