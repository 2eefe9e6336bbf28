"""Socket addresses: peers as rsyslog's FROMHOST-IP, and listening sockets."""

from __future__ import annotations

import contextlib
import socket

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)


def peer_ip(address: tuple[object, ...]) -> str:
    """FROMHOST-IP of a socket peer: IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is written as IPv4."""
    host = str(address[0])
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bind_socket(
    host: str,
    port: int,
    kind: socket.SocketKind,
    *,
    reuse_port: bool = False,
    rcvbuf_bytes: int = 0,
    freebind: bool = False,
) -> socket.socket:
    """A non-blocking socket bound to host:port ("" = all IPv4 addresses)."""
    family = family_of(host)
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # dual stack
        if rcvbuf_bytes:
            set_receive_buffer(sock, rcvbuf_bytes)
        if freebind:  # the address may appear later (a bridge created with the first pod)
            sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)  # IPv6 sockets take it too
        try:
            sock.bind((host or "0.0.0.0", port))
        except OSError as exc:  # name the address: "Address already in use" alone does not
            name = "tcp" if kind == socket.SOCK_STREAM else "udp"
            where = f"[{host}]:{port}" if ":" in host else f"{host or '0.0.0.0'}:{port}"
            raise OSError(exc.errno, f"cannot bind {name} {where}: {exc.strerror}") from exc
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def set_receive_buffer(sock: socket.socket, size: int) -> int:
    """SO_RCVBUFFORCE (root may exceed net.core.rmem_max), else SO_RCVBUF; returns the result."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
