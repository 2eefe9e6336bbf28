"""TCP listener: RFC 6587 framing per connection (relay.framing), frames to `on_frame`."""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from collections.abc import Callable
from typing import cast

from relay.framing import Framer
from relay.limits import SourceFilter, TokenBuckets
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
        self.last_data = time.monotonic()
        self._held: list[bytes] = []  # frames waiting for the rate limit
        self._release_handle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.peer = peer_ip(transport.get_extra_info("peername") or ("?",))
        server = self._server
        if server.sources is not None and not server.sources.allows(self.peer):
            server.refused_connections += 1
            self.transport.abort()  # not an allowed source: no further work
            return
        if len(server.connections) >= server.max_connections:
            server.refused_connections += 1
            self.transport.abort()
            return
        server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        server = self._server
        server.last_data = self.last_data = time.monotonic()
        server.bytes += len(data)
        frames = self._framer.feed(data)
        if frames:
            server.frames += len(frames)
            if server.rate_limit is None:
                self._on_frames(frames, self.peer, time.time())
            else:
                self._deliver_paced(server.rate_limit, frames)

    def _deliver_paced(self, buckets: TokenBuckets, frames: list[bytes]) -> None:
        """Over the rate: hand on what the tokens allow, hold the rest and stop reading until
        it is earned (TCP pushes back on the sender; nothing is dropped)."""
        now = time.time()
        left = buckets.take(self.peer, len(frames), now)
        if left >= 0:
            self._on_frames(frames, self.peer, now)
            return
        allowed = max(len(frames) + math.floor(left), 0)
        buckets.give_back(self.peer, len(frames) - allowed)
        if allowed:
            self._on_frames(frames[:allowed], self.peer, now)
        self._held = frames[allowed:]
        if self.transport is not None and self._release_handle is None:
            self._server.paused += 1
            self.transport.pause_reading()
        delay = max(min(len(self._held), buckets.burst), 1) / buckets.rate
        self._release_handle = asyncio.get_running_loop().call_later(delay, self._release)

    def _release(self) -> None:
        self._release_handle = None
        held, self._held = self._held, []
        buckets = self._server.rate_limit
        if held and buckets is not None:
            self._deliver_paced(buckets, held)
        if not self._held and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._release_handle is not None:
            self._release_handle.cancel()
        # frames held by the rate limit were received: hand them on; and a partial LF frame at
        # close is still a message, as in rsyslog
        frames = self._held + self._framer.close()
        self._held = []
        if frames:
            self._server.frames += len(frames)
            self._on_frames(frames, self.peer, time.time())
        self._server.account(self._framer)
        self._server.connections.discard(self)
        self.transport = None


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
        self,
        on_frames: OnFrames,
        *,
        max_message_bytes: int = 8096,
        oversize: str = "truncate",
        sources: SourceFilter | None = None,
        rate_limit: TokenBuckets | None = None,
        max_connections: int = 10_000,
        idle_timeout_s: float = 0.0,
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
        self.sources = sources
        self.rate_limit = rate_limit
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.refused_connections = 0
        self.idle_closed = 0
        self.paused = 0
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
            "tcp_refused_connections": self.refused_connections,
            "tcp_idle_closed": self.idle_closed,
            "tcp_rate_paused": self.paused,
        }

    def account(self, framer: Framer) -> None:
        self.truncated += framer.truncated
        self.framing_errors += framer.framing_errors
        self.discarded_bytes += framer.discarded_bytes

    async def close_idle_forever(self) -> None:
        """Close connections silent for idle_timeout_s (a peer that vanished without a FIN, or
        a slow-loris holding a slot)."""
        if not self.idle_timeout_s:
            return
        while True:
            await asyncio.sleep(min(self.idle_timeout_s / 4, 30.0))
            cutoff = time.monotonic() - self.idle_timeout_s
            for connection in [c for c in self.connections if c.last_data < cutoff]:
                if connection.transport is not None:
                    self.idle_closed += 1
                    logger.info("closing idle TCP connection from %s", connection.peer)
                    connection.transport.close()

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
