"""Listening sockets for the configured addresses, bound before any worker starts.

Binding is separate from serving so that a supervisor can bind once and hand the same sockets to
worker processes, and so that port 0 (tests) resolves to one port shared by UDP and TCP.
"""

from __future__ import annotations

import logging
import socket
from typing import NamedTuple

from relay.config import RELP_PORT, ListenConfig, parse_address
from relay.ingest.addresses import bind_socket
from relay.ingest.steering import OLDEST, SUCCESSOR, steer_by_source_ip, steer_to

logger = logging.getLogger(__name__)

LISTEN_BACKLOG = 1024


class BoundSocket(NamedTuple):
    kind: str  # "udp" | "tcp" | "tls" | "relp" | "relp-tls"
    host: str
    port: int
    sock: socket.socket


def bind_listeners(listen: ListenConfig, *, copies: int = 1) -> list[list[BoundSocket]]:
    """`copies` sets of sockets on the configured addresses, one set per worker process.

    Every socket has SO_REUSEPORT, so that a new process (a rolling update) binds the same
    address while the old one serves. With several copies a BPF program picks the socket by the
    sender's IP (relay.ingest.steering): all of a sender's datagrams and connections reach
    the same worker, so its lines keep their order. With one, the group's oldest socket gets
    everything until its process hands over (`hand_over`). Port 0 is resolved once, by the
    first TCP socket.
    """
    reuse_port = True
    sets: list[list[BoundSocket]] = []
    streams = _stream_listeners(listen)
    try:
        first = _bind_set(listen, listen.addresses, reuse_port)
        for kind, addresses, default_port in streams:
            first += _bind_stream(listen, addresses, kind, default_port, reuse_port)
        sets.append(first)
        resolved = _resolved_addresses(listen, first)
        for _ in range(copies - 1):
            more = _bind_set(listen, resolved, reuse_port)
            for kind, _, default_port in streams:
                same = [_address(b.host, b.port) for b in first if b.kind == kind]
                more += _bind_stream(listen, same, kind, default_port, reuse_port)
            sets.append(more)
        for bound in first:
            _steer(bound, copies)
    except BaseException:
        close_all([item for bound in sets for item in bound])
        raise
    return sets


def _steer(bound: BoundSocket, copies: int) -> None:
    try:
        if copies == 1:
            steer_to(bound.sock, OLDEST)
        else:
            steer_by_source_ip(bound.sock, copies)
    except OSError as exc:
        if copies == 1:
            logger.warning("%s %s:%d: cannot steer to the oldest socket (%s): a process started "
                           "beside this one shares its traffic", bound.kind, bound.host,
                           bound.port, exc)  # fmt: skip
            return
        logger.warning(
            "%s %s:%d: cannot steer senders to workers by source IP (%s); a sender using "
            "several connections or ports may see its lines reordered",
            bound.kind, bound.host, bound.port, exc,
        )  # fmt: skip


def hand_over(bound: list[BoundSocket]) -> None:
    """Stopping (one process per address): new datagrams and connections go to the socket that
    joined the group after ours, a new process's, if there is one (else still to ours)."""
    for item in bound:
        try:
            steer_to(item.sock, SUCCESSOR)
        except OSError as exc:
            logger.warning("%s %s:%d: cannot hand over to a successor: %s",
                           item.kind, item.host, item.port, exc)  # fmt: skip


def steer_around(first: list[BoundSocket], copies: int, down: set[int]) -> None:
    """Steer the senders of the copies in `down` (workers not serving) to live ones; an empty
    `down` puts every sender back on its own copy. `first`: the first set (one socket per
    reuseport group is enough to replace the group's program)."""
    live = [index for index in range(copies) if index not in down]
    redirect = {dead: live[dead % len(live)] for dead in sorted(down)} if live else {}
    for bound in first:
        try:
            steer_by_source_ip(bound.sock, copies, redirect)
        except OSError as exc:  # steering was refused at bind already (logged there)
            logger.debug("%s %s:%d: cannot steer: %s", bound.kind, bound.host, bound.port, exc)


def close_all(bound: list[BoundSocket]) -> None:
    for item in bound:
        item.sock.close()


def _bind_set(listen: ListenConfig, addresses: list[str], reuse_port: bool) -> list[BoundSocket]:
    bound: list[BoundSocket] = []
    try:
        for address in addresses:
            host, port = parse_address(address)
            if listen.tcp:
                sock = bind_socket(
                    host, port, socket.SOCK_STREAM, reuse_port=reuse_port, freebind=listen.freebind
                )
                sock.listen(LISTEN_BACKLOG)  # connections queue even before a worker serves it
                port = sock.getsockname()[1]  # port 0: UDP takes the same number
                bound.append(BoundSocket("tcp", host, port, sock))
            if listen.udp:
                sock = bind_socket(
                    host,
                    port,
                    socket.SOCK_DGRAM,
                    reuse_port=reuse_port,
                    rcvbuf_bytes=listen.rcvbuf_bytes,
                    freebind=listen.freebind,
                )
                bound.append(BoundSocket("udp", host, sock.getsockname()[1], sock))
    except BaseException:
        close_all(bound)
        raise
    return bound


def _stream_listeners(listen: ListenConfig) -> list[tuple[str, list[str], int]]:
    """(kind, addresses, default port) of the stream listeners beside `listen.addresses`:
    `tls` (syslog over TLS), `relp` and `relp-tls`."""
    return [
        ("tls", listen.tls.addresses, 6514),
        ("relp", listen.relp.addresses, RELP_PORT),
        ("relp-tls", listen.relp.tls_addresses, RELP_PORT),
    ]


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bind_stream(
    listen: ListenConfig, addresses: list[str], kind: str, default_port: int, reuse_port: bool
) -> list[BoundSocket]:
    """TCP sockets of TLS or RELP listeners (`kind`), not paired with a UDP one."""
    bound: list[BoundSocket] = []
    try:
        for address in addresses:
            host, port = parse_address(address, default_port)
            sock = bind_socket(
                host, port, socket.SOCK_STREAM, reuse_port=reuse_port, freebind=listen.freebind
            )
            sock.listen(LISTEN_BACKLOG)
            bound.append(BoundSocket(kind, host, sock.getsockname()[1], sock))
    except BaseException:
        close_all(bound)
        raise
    return bound


def _resolved_addresses(listen: ListenConfig, bound: list[BoundSocket]) -> list[str]:
    """The configured addresses with port 0 replaced by the port actually bound."""
    step = int(listen.tcp) + int(listen.udp)
    resolved = []
    for index, address in enumerate(listen.addresses):
        host, _ = parse_address(address)
        port = bound[index * step].port
        resolved.append(_address(host, port))
    return resolved
