"""UDP listener: one datagram is one message, cut at the maximum message size."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import cast

from relay.transport.addresses import peer_ip

OnFrame = Callable[[bytes, str, float], None]


class UdpListener(asyncio.DatagramProtocol):
    """Hands every non-empty datagram to `on_frame(frame, peer_ip, received_at)`.

    The work per datagram (parse, render, append to a buffer) is pure CPU and short, so it runs
    right here: a queue in between would only add a hop per message.
    """

    def __init__(self, on_frame: OnFrame, *, max_message_bytes: int = 8096) -> None:
        self._on_frame = on_frame
        self._max = max_message_bytes
        self._peers: dict[str, str] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.datagrams = 0
        self.truncated = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not subclass asyncio.DatagramTransport
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not data:  # rsyslog ignores empty datagrams
            return
        self.datagrams += 1
        host = addr[0]
        peer = self._peers.get(host)
        if peer is None:
            peer = self._peers[host] = peer_ip(addr)
            if len(self._peers) > 65536:
                self._peers.clear()
        if len(data) > self._max:
            self.truncated += 1
            data = data[: self._max]
        self._on_frame(data, peer, time.time())

    def error_received(self, exc: Exception) -> None:  # ICMP errors etc.: nothing to do
        pass
