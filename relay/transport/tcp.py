"""TCP listener: RFC 6587 framing per connection (relay.framing), frames to `on_frame`."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import cast

from relay.framing import Framer
from relay.transport.addresses import peer_ip

logger = logging.getLogger(__name__)

OnFrames = Callable[[list[bytes], str, float], None]


class TcpConnection(asyncio.Protocol):
    def __init__(self, server: TcpListener) -> None:
        self._server = server
        self._framer = server.new_framer()
        self._on_frames = server.on_frames
        self.peer = "?"
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.peer = peer_ip(transport.get_extra_info("peername") or ("?",))
        self._server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        server = self._server
        server.last_data = time.monotonic()
        server.bytes += len(data)
        frames = self._framer.feed(data)
        if frames:
            server.frames += len(frames)
            self._on_frames(frames, self.peer, time.time())

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        # a partial LF frame at close is still a message, as in rsyslog
        frames = self._framer.close()
        if frames:
            self._server.frames += len(frames)
            self._on_frames(frames, self.peer, time.time())
        self._server.account(self._framer)
        self._server.connections.discard(self)


def _accept_backlog(sock: socket.socket) -> list[socket.socket]:
    accepted: list[socket.socket] = []
    while True:
        try:
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError):
            return accepted
        except OSError:  # the socket is closed or broken: nothing more to take
            return accepted
        conn.setblocking(False)
        accepted.append(conn)


class TcpListener:
    """Owns the accepted connections of one listening socket and their framing settings."""

    def __init__(
        self, on_frames: OnFrames, *, max_message_bytes: int = 8096, oversize: str = "truncate"
    ) -> None:
        self.on_frames = on_frames
        self.max_message_bytes = max_message_bytes
        self.oversize = oversize
        self.connections: set[TcpConnection] = set()
        self.accepted = 0
        self.truncated = 0
        self.discarded_bytes = 0
        self.framing_errors = 0
        self.frames = 0
        self.bytes = 0
        self.server: asyncio.base_events.Server | None = None
        self.last_data = 0.0

    def new_framer(self) -> Framer:
        self.accepted += 1
        return Framer(max_msg_bytes=self.max_message_bytes, oversize=self.oversize)

    def protocol(self) -> TcpConnection:
        return TcpConnection(self)

    def stats(self) -> dict[str, int]:
        """Counters of closed connections plus the live ones' (read at scrape time)."""
        live = [c._framer for c in self.connections]
        return {
            "received_tcp": self.frames,
            "tcp_bytes": self.bytes,
            "tcp_connections": len(self.connections),
            "tcp_accepted": self.accepted,
            "tcp_truncated": self.truncated + sum(f.truncated for f in live),
            "tcp_discarded_bytes": self.discarded_bytes + sum(f.discarded_bytes for f in live),
            "tcp_framing_errors": self.framing_errors + sum(f.framing_errors for f in live),
            "tcp_buffered_bytes": sum(f.buffered_bytes for f in live),
        }

    def account(self, framer: Framer) -> None:
        self.truncated += framer.truncated
        self.framing_errors += framer.framing_errors
        self.discarded_bytes += framer.discarded_bytes

    async def drain_and_close(self, timeout_s: float, sock: socket.socket | None = None) -> None:
        """Stop accepting; let open connections deliver what is in flight, then close them.

        Connections the kernel has completed but we have not accepted yet (`sock`'s backlog)
        hold data their senders consider delivered: they are accepted and drained too.
        """
        backlog = _accept_backlog(sock) if sock is not None else []
        if self.server is not None:
            self.server.close()
        loop = asyncio.get_running_loop()
        for accepted in backlog:
            await loop.connect_accepted_socket(self.protocol, accepted)
        deadline = time.monotonic() + timeout_s
        # what senders already sent sits in the kernel's buffers: read until the connections
        # have been quiet for a moment (or the drain time is up) before closing them
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            if time.monotonic() - self.last_data >= 0.2:
                break
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
        for _ in range(100):  # connection_lost runs on a later loop iteration
            if not self.connections:
                break
            await asyncio.sleep(0.01)
