"""The wire level: the traffic port's HTTP/1.1 server and the outbound client pools.

Inbound: ``server`` (the listener and one protocol per client connection) hands each
request to a handler as a ``request.HttpRequest``; refused heads get ``error_json``'s
answer. Outbound: ``client`` (``Pool`` and ``Response``) over ``connection`` (one
upstream connection), writing heads built by ``request_head``. ``headers`` holds the
pure hop-by-hop and forwarding rules both sides share.

Nothing here knows about routes, shadows or recording; the proxy layer above hands the
server a handler and asks the client for connections.
"""
