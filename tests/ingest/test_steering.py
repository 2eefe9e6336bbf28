"""Source-IP steering over a SO_REUSEPORT group, on real sockets."""

from __future__ import annotations

import socket
import time
from collections import defaultdict

import pytest

from relay.ingest.steering import steer_by_source_ip


def _group(
    kind: socket.SocketKind, family: socket.AddressFamily, host: str, n: int
) -> list[socket.socket]:
    group: list[socket.socket] = []
    for _ in range(n):
        sock = socket.socket(family, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, group[0].getsockname()[1] if group else 0))
        if kind == socket.SOCK_STREAM:
            sock.listen(64)
        sock.setblocking(False)
        group.append(sock)
    steer_by_source_ip(group[0], n)
    return group


def _receivers(group: list[socket.socket]) -> set[int]:
    hit = set()
    for index, sock in enumerate(group):
        try:
            if sock.type == socket.SOCK_DGRAM:
                sock.recvfrom(64)
            else:
                sock.accept()[0].close()
            hit.add(index)
        except BlockingIOError:
            pass
    return hit


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_STREAM], ids=["udp", "tcp"])
@pytest.mark.parametrize(
    ("family", "host"),
    [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::")],
    ids=["ipv4", "dual-stack"],
)
def test_each_source_ip_always_reaches_the_same_socket(
    kind: socket.SocketKind, family: socket.AddressFamily, host: str
) -> None:
    group = _group(kind, family, host, 3)
    port = group[0].getsockname()[1]
    seen: dict[str, set[int]] = defaultdict(set)
    try:
        for source in [f"127.0.0.{i}" for i in range(2, 14)]:
            for _ in range(4):  # a new source port each time
                with socket.socket(socket.AF_INET, kind) as client:
                    client.bind((source, 0))
                    if kind == socket.SOCK_DGRAM:
                        client.sendto(b"x", ("127.0.0.1", port))
                    else:
                        client.connect(("127.0.0.1", port))
                    deadline = time.monotonic() + 2
                    hit: set[int] = set()
                    while not hit and time.monotonic() < deadline:
                        hit = _receivers(group)
                    seen[source] |= hit
    finally:
        for sock in group:
            sock.close()
    assert all(len(hit) == 1 for hit in seen.values()), dict(seen)
    assert len({next(iter(hit)) for hit in seen.values()}) == 3  # and all sockets get sources


def _udp_receiver(group: list[socket.socket], source: str) -> int:
    port = group[0].getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.bind((source, 0))
        client.sendto(b"x", ("127.0.0.1", port))
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        hit = _receivers(group)
        if hit:
            [index] = hit
            return index
    raise AssertionError(f"no socket got the datagram of {source}")


def test_redirect_moves_a_dead_sockets_sources_and_back() -> None:
    group = _group(socket.SOCK_DGRAM, socket.AF_INET, "127.0.0.1", 3)
    sources = [f"127.0.0.{i}" for i in range(2, 30)]
    try:
        before = {source: _udp_receiver(group, source) for source in sources}
        assert set(before.values()) == {0, 1, 2}
        steer_by_source_ip(group[0], 3, {1: 2})  # socket 1's worker died
        during = {source: _udp_receiver(group, source) for source in sources}
        assert during == {s: 2 if i == 1 else i for s, i in before.items()}
        steer_by_source_ip(group[0], 3)  # it serves again
        assert {source: _udp_receiver(group, source) for source in sources} == before
    finally:
        for sock in group:
            sock.close()
