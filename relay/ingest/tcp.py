"""TCP and TLS listeners: RFC 6587 framing per connection (ingest.framing), frames to `on_frame`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, cast

from relay.ingest.addresses import peer_ip
from relay.ingest.framing import Framer
from relay.ingest.limits import Gate, SourceFilter, TokenBuckets
from relay.ingest.relp import encode
from relay.tls import describe

logger = logging.getLogger(__name__)

OnFrames = Callable[[list[bytes], str, float], None]
SUMMARY_INTERVAL_S = 10.0  # idle closes, refusals and resets: at most one line per kind this often
RELP_OPEN = b"1 open "  # how omrelp's every connection begins
RELP_REFUSAL = encode(1, b"rsp", b"500 plain syslog port, not RELP: use listen.relp or omfwd")


class TcpConnection(asyncio.Protocol):
    def __init__(self, server: TcpListener) -> None:
        self._server = server
        self._framer = server.new_framer()
        self._on_frames = server.on_frames
        self.peer = "?"
        self.transport: asyncio.Transport | None = None
        self.last_data = time.monotonic()
        self.frame_since: float | None = None  # when the frame still incomplete began
        self._held: list[bytes] = []  # frames waiting for the rate limit
        self._release_handle: asyncio.TimerHandle | None = None
        self._has_slot = False  # counted in the server's per-source connections
        self._start: bytes | None = b""  # the first bytes, until they cannot be a RELP open

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.peer = peer_ip(transport.get_extra_info("peername") or ("?",))
        server = self._server
        if server.sources is not None and not server.sources.allows(self.peer):
            server.refused_connections += 1
            self.transport.abort()  # not an allowed source: no further work
            return
        if len(server.connections) >= server.max_connections:
            server.refuse(self, "max_connections")
            return
        if server.per_source.get(self.peer, 0) >= server.max_connections_per_source:
            server.refuse(self, "max_connections_per_source")
            return
        server.per_source[self.peer] = server.per_source.get(self.peer, 0) + 1
        self._has_slot = True
        server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        server = self._server
        server.last_data = self.last_data = now = time.monotonic()
        server.bytes += len(data)
        if self._start is not None:
            data = self._start + data
            if len(data) < len(RELP_OPEN) and RELP_OPEN.startswith(data):
                self._start = data  # maybe omrelp: wait for the rest of its `1 open `
                return
            self._start = None
            if data.startswith(RELP_OPEN):
                self._refuse_relp()
                return
        frames = self._framer.feed(data)
        # a frame that takes too long to complete counts as idle (one byte a second would
        # otherwise hold the slot for ever): note when the frame now incomplete began
        if not self._framer.in_frame:
            self.frame_since = None
        elif frames or self.frame_since is None:
            self.frame_since = now
        if frames:
            server.frames += len(frames)
            if server.rate_limit is None:
                self._on_frames(frames, self.peer, time.time())
            else:
                self._deliver_paced(server.rate_limit, frames)
            gate = server.gate
            if gate is not None and gate.closed and self.transport is not None:
                # a forward spool is full (`on_full = "block"`): stop reading until it has room
                self.transport.pause_reading()
                gate.wait(self._resume_from_gate)

    def _refuse_relp(self) -> None:
        """A RELP client (omrelp) on a plain syslog port: its commands would be junk lines.
        Answered with a RELP error, closed, logged once per source, counted."""
        server = self._server
        server.relp_refused += 1
        if self.peer not in server.relp_warned:
            if len(server.relp_warned) >= 10_000:
                server.relp_warned.clear()
            server.relp_warned.add(self.peer)
            sockname = self.transport.get_extra_info("sockname") if self.transport else None
            port = sockname[1] if sockname else "?"
            logger.warning(
                "%s speaks RELP (omrelp) to the plain syslog port %s: nothing is written; "
                "point omrelp at a listen.relp address (usual port 2514), or send with omfwd",
                self.peer, port,
            )  # fmt: skip
        self._send_refusal(RELP_REFUSAL)

    def _send_refusal(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)
            self.transport.close()

    def _resume_from_gate(self) -> None:
        if not self._held and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

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
        if isinstance(exc, OSError) and self._has_slot:
            # a reset: what the sender's kernel still held for us is gone, and we cannot know
            # how much; counted and logged (RST answers a sender's close with unread data)
            self._server.resets += 1
            self._server.summary.note("reset", self.peer)
        # frames held by the rate limit were received: hand them on; and a partial LF frame at
        # close is still a message, as in rsyslog (so are first bytes held as a maybe-RELP)
        start = self._framer.feed(self._start) if self._start else []
        frames = self._held + start + self._framer.close()
        self._held = []
        if frames:
            self._server.frames += len(frames)
            self._on_frames(frames, self.peer, time.time())
        self._server.account(self._framer)
        self._server.connections.discard(self)
        if self._has_slot:
            self._has_slot = False
            self._server.release_slot(self.peer)
        self.transport = None


class TlsConnection(TcpConnection):
    """A TCP connection whose bytes are TLS, decrypted with an SSLObject over memory BIOs.

    The TLS layer is run here rather than by the event loop (`create_server(ssl=...)` or
    `start_tls`) so that a failed handshake (no client certificate, an untrusted one, a client
    speaking plain syslog) is logged with the peer's address and the reason, and counted; and
    because uvloop's server-side `start_tls` stalls handshakes (seen with uvloop 0.23).
    """

    def __init__(self, server: TcpListener, context: ssl.SSLContext) -> None:
        super().__init__(server)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._handshaken = False
        self._reported = False  # the failure has been logged and counted
        self._timer: asyncio.TimerHandle | None = None
        self._close_notified = False  # the client sent close_notify

    def data_received(self, data: bytes) -> None:
        if not self._handshaken and self._timer is None:
            # the handshake timeout starts with the first byte: syslog-ng connects at start
            # and handshakes only with its first message; until then the idle timeout rules
            self._timer = asyncio.get_running_loop().call_later(
                self._server.tls_handshake_timeout_s, self._handshake_timed_out
            )
        self._server.last_data = self.last_data = time.monotonic()
        self._incoming.write(data)
        try:
            if not self._handshaken:
                self._tls.do_handshake()
                self._handshaken = True
                if self._timer is not None:
                    self._timer.cancel()
            plain = self._read_plain()
        except ssl.SSLWantReadError:
            self._send_tls_records()  # the handshake goes on
            return
        except (ssl.SSLError, ssl.CertificateError) as exc:
            self._send_tls_records()  # the alert tells the client why
            self._fail(describe(exc))
            return
        self._send_tls_records()
        if plain:
            super().data_received(plain)
        if self._incoming.pending and self.frame_since is None:
            self.frame_since = self.last_data  # a TLS record begun is a frame begun
        if self._close_notified:
            self._answer_close_notify()

    def _read_plain(self) -> bytes:
        chunks = []
        while True:
            try:
                chunk = self._tls.read(256 * 1024)
            except ssl.SSLWantReadError:
                break  # all there is for now
            except ssl.SSLZeroReturnError:
                chunk = b""
            if not chunk:  # (an SSLObject reads b"" once the client's close_notify came)
                self._close_notified = True
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def _send_refusal(self, data: bytes) -> None:
        with contextlib.suppress(ssl.SSLError):
            self._tls.write(data)
        self._send_tls_records()
        if self.transport is not None:
            self.transport.close()

    def _answer_close_notify(self) -> None:
        """The client is done: send our close_notify and close (RFC 5246 7.2.1)."""
        if self.transport is None or self.transport.is_closing():
            return
        with contextlib.suppress(ssl.SSLError, ValueError):  # if it fails, close all the same
            self._tls.unwrap()
        self._send_tls_records()
        self.transport.close()

    def _send_tls_records(self) -> None:
        pending = self._outgoing.read()
        if pending and self.transport is not None and not self.transport.is_closing():
            self.transport.write(pending)

    def _fail(self, reason: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._reported:
            return
        self._reported = True
        if not self._handshaken:
            self._server.tls_failed += 1
        if self._server.first_in_a_while((self.peer, reason)):  # a retrying client: once a minute
            if self._handshaken:
                logger.warning("TLS error on the connection from %s: %s", self.peer, reason)
            else:
                logger.warning("TLS handshake with %s failed: %s", self.peer, reason)
        if self.transport is not None:
            self.transport.close()

    def _handshake_timed_out(self) -> None:
        if not self._handshaken and self.transport is not None:
            timeout = self._server.tls_handshake_timeout_s
            self._fail(f"no handshake within {timeout:g}s of the first byte")
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        # (a refused source never reached the handshake: not a TLS failure)
        if not self._handshaken and self in self._server.connections:
            self._fail(describe(exc) if exc is not None else "closed before the handshake")
            exc = None  # no message could have been lost before the handshake: not a reset
        elif self._incoming.pending:
            # the stream ended inside a TLS record: those bytes cannot be decrypted
            self._server.discarded_bytes += self._incoming.pending
            self._server.summary.note("tls_cut", self.peer, self._incoming.pending)
        super().connection_lost(exc)


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


# what the summary lines say, per kind: (level, text with the count, the setting, last peer)
_SUMMARIES: dict[str, tuple[int, str]] = {
    "idle": (logging.INFO, "closed %d idle TCP connection(s) (silent for %s; last from %s)"),
    "slow_frame": (logging.INFO, "closed %d TCP connection(s) whose frame took longer than "
                   "frame_timeout_s (%s) to complete (last from %s)"),
    "max_connections": (logging.WARNING, "refused %d TCP connection(s): max_connections (%s) "
                        "open (last from %s)"),
    "max_connections_per_source": (logging.WARNING, "refused %d TCP connection(s) over "
                                   "max_connections_per_source (%s) (last from %s)"),
    "reset": (logging.WARNING, "%d TCP connection(s) reset by the sender%s: what it had not "
              "sent yet is lost (last from %s)"),
    "tls_cut": (logging.WARNING, "%d byte(s) of unfinished TLS records lost at close%s "
                "(last from %s)"),
}  # fmt: skip


class Summary:
    """Events that would otherwise log a line each (idle closes, refusals, resets), counted
    per kind between two `log` calls and logged as one line per kind."""

    def __init__(self) -> None:
        self._counts: dict[str, list[Any]] = {}  # kind -> [count, last peer]

    def note(self, kind: str, peer: str, count: int = 1) -> None:
        entry = self._counts.setdefault(kind, [0, peer])
        entry[0] += count
        entry[1] = peer

    def log(self, settings: dict[str, str]) -> None:
        counts, self._counts = self._counts, {}
        for kind, (count, peer) in counts.items():
            level, text = _SUMMARIES[kind]
            logger.log(level, text, count, settings.get(kind, ""), peer)


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
        max_connections_per_source: int = 10_000,
        idle_timeout_s: float = 0.0,
        frame_timeout_s: float = 0.0,
        gate: Gate | None = None,
        tls: ssl.SSLContext | None = None,
        tls_handshake_timeout_s: float = 10.0,
    ) -> None:
        """`gate`: closed while a downstream queue is full (connections pause); `tls`: the
        listener's TLS context (handshake per connection, then as TCP); `idle_timeout_s`,
        `frame_timeout_s`: close a connection silent that long, or whose frame took that long
        without completing (0: never)."""
        self.on_frames = on_frames
        self.gate = gate
        self.tls = tls
        self.tls_handshake_timeout_s = tls_handshake_timeout_s
        self.tls_failed = 0
        self._logged: dict[tuple[str, str], float] = {}
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
        self.max_connections_per_source = max_connections_per_source
        self.per_source: dict[str, int] = {}  # open connections per peer address
        self.idle_timeout_s = idle_timeout_s
        self.frame_timeout_s = frame_timeout_s
        self.refused_connections = 0
        self.refused_per_source = 0
        self.relp_refused = 0  # RELP clients on this plain port (item 3 of issue 15)
        self.relp_warned: set[str] = set()  # sources told so in the log
        self.resets = 0
        self.summary = Summary()
        self.idle_closed = 0
        self.paused = 0
        self.server: asyncio.base_events.Server | None = None
        self.last_data = 0.0

    def first_in_a_while(self, key: tuple[str, str], interval_s: float = 60.0) -> bool:
        """For log lines a misconfigured client would repeat at every reconnect."""
        now = time.monotonic()
        if now - self._logged.get(key, -interval_s) < interval_s:
            return False
        if len(self._logged) > 1000:
            self._logged.clear()
        self._logged[key] = now
        return True

    extra_frame_delimiter: int | None = None
    """listen.extra_frame_delimiter (rsyslog's AddtlFrameDelimiter), for new connections."""

    def refuse(self, connection: TcpConnection, limit: str) -> None:
        self.refused_connections += 1
        if limit == "max_connections_per_source":
            self.refused_per_source += 1
        self.summary.note(limit, connection.peer)
        if connection.transport is not None:
            connection.transport.abort()

    def release_slot(self, peer: str) -> None:
        left = self.per_source.get(peer, 1) - 1
        if left > 0:
            self.per_source[peer] = left
        else:
            self.per_source.pop(peer, None)

    def new_framer(self) -> Framer:
        self.accepted += 1
        return Framer(
            max_msg_bytes=self.max_message_bytes,
            oversize=self.oversize,
            extra_delimiter=self.extra_frame_delimiter,
        )

    def protocol(self) -> asyncio.Protocol:
        if self.tls is not None:
            return TlsConnection(self, self.tls)
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
            "tcp_refused_per_source": self.refused_per_source,
            "tcp_resets": self.resets,
            "tcp_idle_closed": self.idle_closed,
            "tcp_rate_paused": self.paused,
            "tls_handshake_failed": self.tls_failed,
            "tcp_relp_refused": self.relp_refused,
        }

    def account(self, framer: Framer) -> None:
        self.truncated += framer.truncated
        self.framing_errors += framer.framing_errors
        self.discarded_bytes += framer.discarded_bytes

    async def close_idle_forever(self) -> None:
        """Close connections silent for idle_timeout_s (a peer that vanished without a FIN) or
        whose frame is not complete after frame_timeout_s (a slow-loris holding a slot); log
        what was closed, refused or reset since the last round, one line per kind."""
        timeouts = [t / 4 for t in (self.idle_timeout_s, self.frame_timeout_s) if t]
        interval = max(min([*timeouts, SUMMARY_INTERVAL_S]), 0.01)
        settings = {
            "idle": f"{self.idle_timeout_s:g}s",
            "slow_frame": f"{self.frame_timeout_s:g}s",
            "max_connections": str(self.max_connections),
            "max_connections_per_source": str(self.max_connections_per_source),
            "reset": " (TLS)" if self.tls is not None else "",
            "tls_cut": "",
        }
        while True:
            await asyncio.sleep(interval)
            self.close_idle(time.monotonic())
            self.summary.log(settings)

    def close_idle(self, now: float) -> None:
        idle_cutoff = now - self.idle_timeout_s if self.idle_timeout_s else -math.inf
        frame_cutoff = now - self.frame_timeout_s if self.frame_timeout_s else -math.inf
        for connection in list(self.connections):
            if connection.transport is None or connection.transport.is_closing():
                continue
            if connection.last_data < idle_cutoff:
                kind = "idle"
            elif connection.frame_since is not None and connection.frame_since < frame_cutoff:
                kind = "slow_frame"
            else:
                continue
            self.idle_closed += 1
            self.summary.note(kind, connection.peer)
            connection.transport.close()

    async def drain_and_close(self, timeout_s: float, sock: socket.socket | None = None) -> None:
        """Stop accepting; half-close every connection and read until its sender closes it
        (at most `timeout_s`, or until all have been quiet for a moment), then close them.

        The FIN tells a sender that checks for a close before it sends (rsyslog's omfwd) to
        reconnect, to whoever has the port now (a rolling update's new process): what it sent
        before it noticed is still read here, so nothing is lost. Connections the kernel has
        completed but we have not accepted yet (`sock`'s backlog) hold data their senders
        consider delivered: they are accepted and drained too.
        """
        backlog = _accept_backlog(sock) if sock is not None else []
        if self.server is not None:
            self.server.close()
        loop = asyncio.get_running_loop()
        for accepted in backlog:
            await loop.connect_accepted_socket(self.protocol, accepted)
        for connection in list(self.connections):
            _half_close(connection.transport)
        started = time.monotonic()
        deadline = started + timeout_s
        # what senders already sent sits in the kernel's buffers: read until they have closed,
        # or been quiet for a moment since the FIN went out (one that never checks would only
        # notice on its next send; data crossing the FIN still arrives meanwhile)
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            if time.monotonic() - max(self.last_data, started) >= DRAIN_QUIET_S:
                break
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
        for _ in range(100):  # connection_lost runs on a later loop iteration
            if not self.connections:
                break
            await asyncio.sleep(0.01)


DRAIN_QUIET_S = 0.2


def _half_close(transport: asyncio.Transport | None) -> None:
    """shutdown(SHUT_WR): our FIN, while we keep reading."""
    if transport is None or transport.is_closing():
        return
    try:
        if transport.can_write_eof():
            transport.write_eof()
    except (OSError, RuntimeError, NotImplementedError):
        pass
