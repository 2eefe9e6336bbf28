"""Sockets in: UDP, TCP and TLS listeners, RFC 6587 framing, peer addresses, binding and
reuseport steering, access control and rate limits. Hands frames (bytes and the peer address) to a
callback; knows nothing of parsing, file formats or forwarding."""
