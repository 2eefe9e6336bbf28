"""RELP listeners (rsyslog's imrelp): ingest.relp sessions over TCP or TLS, messages to
`on_frames` as TCP's frames, each acknowledged only once `commit` says it is safe.

A session's `syslog` frames are delivered as they are read; their `rsp 200 OK` waits until the
listener's `commit` (the server's: write the files' buffered lines, and the forward spools',
with `ack = "fsynced"` fsync them too) has run, once per event-loop wake-up for every session
that received something meanwhile, so a SIGKILL after an ack loses nothing and a busy listener
writes no more often than with plain TCP. Replies go out in TXNR order: an `open` or `close`
answer waits behind the acks before it. When a commit cannot make the messages safe (a write
failed, lines were lost) their sessions end unacknowledged: the senders resend. While the spools
still belong to the previous process (a rolling update) the acks wait, and so do the senders
once their window is full.

Connection limits, access control, idle and frame timeouts and the drain at stop are TCP's
(ingest.tcp); the rate limit pauses reading instead of holding messages. At stop every session
gets its acks, then `serverclose`: what was not acknowledged is resent to whoever has the port.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, Literal

from relay import __version__
from relay.ingest.framing import MAX_FRAME_BYTES
from relay.ingest.relp import RelpDecoder, RelpError, ServerSession, ok
from relay.ingest.tcp import OnFrames, TcpConnection, TcpListener, TlsConnection

logger = logging.getLogger(__name__)

Safety = Literal["safe", "wait", "failed"]
Commit = Callable[[bool], Safety]
"""`commit(fsync)`: make everything delivered so far safe -> "safe"; "wait": not possible yet
(try again later); "failed": some of it is lost."""

COMMIT_RETRY_S = 0.1  # while a commit says "wait"
CLOSE_WAIT_S = 1.0  # at stop: how long sessions get to take their serverclose


class RelpConnection(TcpConnection):
    """One RELP session: decode, answer, deliver, acknowledge after the commit."""

    def __init__(self, server: RelpListener) -> None:
        super().__init__(server)
        self._relp = server
        self._decoder = RelpDecoder(server.max_frame_bytes)
        self._session = ServerSession(version=__version__)
        self._out: list[bytes | int] = []  # replies in order; an int: a message's TXNR to ack
        self.unacked = 0  # messages delivered, ack not yet sent
        self._closing = False  # close once `_out` is sent
        self._paused = False
        self._rate_until = 0.0  # the rate limit pauses reading until then (monotonic)
        self._rate_handle: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        server = self._relp
        server.last_data = self.last_data = now = time.monotonic()
        server.bytes += len(data)
        if self._session.closed:
            return  # after the end of the session (its last reply is on its way)
        try:
            frames, problem = self._decoder.feed(data), None
        except RelpError as exc:
            frames, problem = exc.frames, exc
        # a frame that takes too long to complete counts as idle (see TcpConnection)
        if not self._decoder.in_frame:
            self.frame_since = None
        elif frames or self.frame_since is None:
            self.frame_since = now
        messages: list[bytes] = []
        for frame in frames:
            step = self._session.on_frame(frame)
            if step.message is not None:
                messages += server.cut(step.message)
                self._out.append(step.txnr)
                self.unacked += 1
            if step.reply:
                self._out.append(step.reply)
            if step.error:
                self._protocol_error(step.error)
            if step.close:
                self._closing = True
                break
        if problem is not None and not self._closing:
            step = self._session.on_error(problem)
            self._out.append(step.reply)
            self._protocol_error(step.error, data)
            self._closing = True
        if messages:
            server.frames += len(messages)
            self._on_frames(messages, self.peer, time.time())
        if self.unacked:
            server.want_commit(self)
        self._send_ready()
        self._limit(len(messages))

    def _protocol_error(self, reason: str, data: bytes = b"") -> None:
        server = self._relp
        server.protocol_errors += 1
        if server.first_in_a_while((self.peer, "relp")):  # a retrying sender: once a minute
            logger.warning("RELP protocol error from %s: %s; session closed%s",
                           self.peer, reason, _hint(data, self._session.opened))  # fmt: skip

    def acknowledge(self, safe: bool) -> None:
        """After a commit: send every reply and ack queued, or (not safe) end the session
        without acknowledging, so the sender resends."""
        if not safe:
            self._out, self.unacked = [], 0
            self._relp.unsafe_closed += 1
            self._send(self._session.serverclose())
            self._closing = True
            self._close_if_done()
            return
        out, self._out = self._out, []
        self._relp.acks += self.unacked
        self.unacked = 0
        self._send(b"".join(ok(item) if isinstance(item, int) else item for item in out))
        self._close_if_done()
        self._update_reading()

    def _send_ready(self) -> None:
        """Send the replies at the head of the queue that no ack precedes."""
        ready = 0
        while ready < len(self._out) and not isinstance(self._out[ready], int):
            ready += 1
        if ready:
            head, self._out = self._out[:ready], self._out[ready:]
            self._send(b"".join(item for item in head if isinstance(item, bytes)))
        self._close_if_done()

    def _close_if_done(self) -> None:
        if self._closing and not self._out and self.transport is not None:
            self.transport.close()

    def _send(self, data: bytes) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def stop(self) -> None:
        """Server stop, after the last commit: tell the client, close."""
        if not self._session.closed:
            self._send(self._session.serverclose())
        self._closing = True
        self._out = []
        self._close_if_done()

    # -- flow control: the window, the rate limit, a full forward spool ------------------------

    def _limit(self, delivered: int) -> None:
        server = self._relp
        if delivered and server.rate_limit is not None:
            left = server.rate_limit.take(self.peer, delivered, time.time())
            if left < 0:
                server.paused += 1
                wait = -left / server.rate_limit.rate
                self._rate_until = time.monotonic() + wait
                if self._rate_handle is None:
                    loop = asyncio.get_running_loop()
                    self._rate_handle = loop.call_later(wait, self._rate_over)
        gate = server.gate
        if gate is not None and gate.closed:
            gate.wait(self._update_reading)
        self._update_reading()

    def _rate_over(self) -> None:
        self._rate_handle = None
        self._update_reading()

    def _update_reading(self) -> None:
        server, transport = self._relp, self.transport
        if transport is None or transport.is_closing():
            return
        gate = server.gate
        pause = (
            self.unacked >= server.window
            or self._rate_until > time.monotonic()
            or (gate is not None and gate.closed)
        )
        if pause != self._paused:
            self._paused = pause
            if pause:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        server = self._relp
        if self._rate_handle is not None:
            self._rate_handle.cancel()
        if isinstance(exc, OSError) and self._has_slot:
            server.resets += 1  # (nothing is lost: what was not acknowledged is resent)
        if self._decoder.in_frame:
            server.cut_frames += 1
        server.forget(self)
        server.connections.discard(self)
        if self._has_slot:
            self._has_slot = False
            server.release_slot(self.peer)
        self.transport = None


class RelpTlsConnection(TlsConnection, RelpConnection):
    """RELP over TLS (omrelp `tls="on"`): TlsConnection decrypts, RelpConnection speaks."""

    def __init__(self, server: RelpListener, context: ssl.SSLContext) -> None:
        super().__init__(server, context)

    def _send(self, data: bytes) -> None:
        if not data or self.transport is None or self.transport.is_closing():
            return
        try:
            self._tls.write(data)
        except ssl.SSLError as exc:
            self._fail(str(exc))
            return
        self._send_tls_records()


def _hint(data: bytes, opened: bool) -> str:
    """What a sender that is not speaking RELP at all may need to change."""
    if opened:
        return ""
    if data[:1] == b"\x16":
        return " (a TLS client: use listen.relp.tls_addresses for RELP over TLS)"
    if data[:1] == b"<" or (data[:1].isdigit() and b" open " not in data[:20]):
        return " (plain syslog? send it to listen.addresses with omfwd)"
    return ""


class RelpListener(TcpListener):
    """The sessions of one RELP listening socket; `commit` makes delivered messages safe."""

    def __init__(
        self,
        on_frames: OnFrames,
        *,
        commit: Commit,
        ack: str = "written",
        window: int = 128,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        **tcp: Any,
    ) -> None:
        """`ack`: "written" or "fsynced" (commit with fsync); `window`: messages a session
        may have unacknowledged before its reading pauses; `max_frame_bytes`: a larger
        DATALEN ends the session (librelp's abort mode), a larger message than
        max_message_bytes is cut per `oversize` as TCP's (`rsyslog`: truncated, as imrelp);
        the rest as TcpListener's."""
        super().__init__(on_frames, **tcp)
        self.commit = commit
        self.fsync = ack == "fsynced"
        self.window = window
        self.max_frame_bytes = max(max_frame_bytes, self.max_message_bytes)
        self._waiting: set[RelpConnection] = set()
        self._commit_handle: asyncio.Handle | None = None
        self.protocol_errors = 0
        self.acks = 0
        self.unsafe_closed = 0
        self.cut_frames = 0

    def protocol(self) -> asyncio.Protocol:
        if self.tls is not None:
            return RelpTlsConnection(self, self.tls)
        return RelpConnection(self)

    def cut(self, data: bytes) -> list[bytes]:
        """A syslog frame's data as messages: a trailing LF dropped (as rsyslog's
        dropTrailingLFOnReception), cut at max_message_bytes per `oversize`."""
        if data.endswith(b"\n"):
            data = data[:-1]
        if not data:
            return []
        limit = self.max_message_bytes
        if len(data) <= limit:
            return [data]
        self.truncated += 1
        if self.oversize == "split":
            return [data[i : i + limit] for i in range(0, len(data), limit)]
        self.discarded_bytes += len(data) - limit
        return [data[:limit]]

    # -- commits --------------------------------------------------------------------------

    def want_commit(self, connection: RelpConnection) -> None:
        """Once per wake-up: every session that received messages in it is acked together."""
        self._waiting.add(connection)
        if self._commit_handle is None:
            self._commit_handle = asyncio.get_running_loop().call_soon(self._commit)

    def _commit(self) -> None:
        self._commit_handle = None
        if not self._waiting:
            return
        safety = self.commit(self.fsync)
        if safety == "wait":
            loop = asyncio.get_running_loop()
            self._commit_handle = loop.call_later(COMMIT_RETRY_S, self._commit)
            return
        if safety == "failed" and self.first_in_a_while(("", "relp-unsafe")):
            logger.error("RELP: messages could not be written; their sessions are closed "
                         "unacknowledged (the senders resend them)")  # fmt: skip
        waiting, self._waiting = self._waiting, set()
        for connection in waiting:
            connection.acknowledge(safety == "safe")

    def forget(self, connection: RelpConnection) -> None:
        self._waiting.discard(connection)

    # -- stats and stop -------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        live = self.connections
        return {
            "received_relp": self.frames,
            "relp_bytes": self.bytes,
            "relp_sessions": len(live),
            "relp_accepted": self.accepted,
            "relp_acks": self.acks,
            "relp_unacked": sum(c.unacked for c in live if isinstance(c, RelpConnection)),
            "relp_protocol_errors": self.protocol_errors,
            "relp_unsafe_closed": self.unsafe_closed,
            "relp_truncated": self.truncated,
            "relp_discarded_bytes": self.discarded_bytes,
            "relp_refused_connections": self.refused_connections,
            "relp_idle_closed": self.idle_closed,
            "relp_resets": self.resets,
            "relp_rate_paused": self.paused,
            "tls_handshake_failed": self.tls_failed,
        }

    async def drain_and_close(self, timeout_s: float, sock: socket.socket | None = None) -> None:
        """Stop accepting; acknowledge what was delivered, send every session `serverclose`
        and close it. Nothing more is read: what a sender has not had acknowledged it resends
        (to the process that has the port now). `timeout_s`, `sock`: as TcpListener's (the
        backlog's connections are left to the kernel: nothing in them was acknowledged)."""
        if self.server is not None:
            self.server.close()
        for connection in list(self.connections):
            if connection.transport is not None and not connection.transport.is_closing():
                connection.transport.pause_reading()
        if self._commit_handle is not None:
            self._commit_handle.cancel()
        self._commit()  # a "wait" here leaves them unacknowledged: resent
        for connection in list(self.connections):
            if isinstance(connection, RelpConnection):
                connection.stop()
        deadline = time.monotonic() + min(timeout_s, CLOSE_WAIT_S)
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()
        if self._commit_handle is not None:
            self._commit_handle.cancel()
            self._commit_handle = None
