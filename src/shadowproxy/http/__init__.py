"""The wire level: the traffic port's HTTP/1.1 server, the outbound client pools, and
the pure header rules both sides share.

Nothing here knows about routes, shadows or recording; the proxy layer above hands the
server a handler and asks the client for connections.
"""
