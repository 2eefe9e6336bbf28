"""Forwarding to upstream collectors: per `[[forward]]` target a spool and a sender.

What a target takes of each received batch is appended to its disk spool (forward.spool) on the
receive path, as one record framed as it goes on the wire (over UDP: a record per datagram),
and written before the next read from any socket: what plura-relay has read survives a SIGKILL.
A sender task per target reads the spool in order and writes it upstream; the receive path
never waits for it (an upstream that is down or slow only makes the spool grow).

Delivery is at least once. Syslog over TCP has no acknowledgements, so a record counts as
delivered when the upstream's kernel has acknowledged its bytes (the socket's send queue, via
SIOCOUTQ, has shrunk past it) and the connection has then stayed up for `confirm_after_s`; only
then is the spool's committed position moved past it. A connection that fails before that sends
everything after the committed position again (duplicates upstream, never a gap). Over UDP a
record counts as delivered once handed to the kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import shutil
import socket
import ssl
import struct
import termios
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from relay.config import Forward
from relay.forward.origin import origip_stamps
from relay.forward.spool import Spool
from relay.forward.spool_disk import MAX_RECORD_MESSAGES, Position
from relay.forward.upstream_format import frame_lf, frame_octet_counted, render, stamp_frame
from relay.message import Offered, SyslogMessage
from relay.output.routes import Decisions, Matcher
from relay.tls import client_context, describe

logger = logging.getLogger(__name__)

READ_BYTES = 256 * 1024
COMMIT_TICK_S = 0.05
MAX_UDP_PAYLOAD = 65_507
_INT = struct.Struct("i")
SETTLE_MAX_S = 5.0  # at shutdown, the longest wait for the upstream to confirm what was sent
STEADY_SESSION_S = 5.0  # a connection that lasted this long resets the reconnect backoff
FAILURE_LOG_INTERVAL_S = 60.0  # the same failure again is logged at most this often, counted


def _stop_if_cancelled() -> None:
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class _Upstream(asyncio.Protocol):
    """The connection's events as futures: writable again, lost."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.lost: asyncio.Future[Exception | None] = loop.create_future()
        self.writable = asyncio.Event()
        self.writable.set()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        pass  # a syslog collector does not answer; whatever it sends is ignored

    def eof_received(self) -> bool:
        return False  # the upstream closed: so do we

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)
        self.writable.set()


class _UdpUpstream(asyncio.DatagramProtocol):
    def __init__(self, target: Target) -> None:
        self._target = target

    def error_received(self, exc: Exception) -> None:
        # ICMP unreachable: the upstream is not listening; that datagram is gone, as UDP goes
        self._target.connect_failures += 1


def _unacknowledged_bytes(transport: asyncio.Transport) -> int | None:
    """Bytes written but not yet acknowledged by the peer's kernel: ours still buffered plus
    the socket's send queue (SIOCOUTQ). None if the socket cannot be asked."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        (queued,) = _INT.unpack(fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))
    except OSError:
        return None
    return transport.get_write_buffer_size() + int(queued)


class Target:
    """One `[[forward]]`: its filter, its spools (its own, plus those of workers that no longer
    exist, drained first) and its sender."""

    def __init__(
        self, config: Forward, own: Spool, orphans: list[tuple[Spool, Path]] | None = None
    ) -> None:
        self.config = config
        self.spool = own
        self._orphans = orphans or []
        matcher = Matcher(config.match)
        # None: everything (no lookup per message)
        self.wants = None if matcher.everything else Decisions(matcher.matches).get
        # RELP frames every message itself: its records are octet-counted, split when sent
        lf = config.framing == "lf" and not config.protocol.startswith("relp")
        self._framing = frame_lf if lf else frame_octet_counted
        tls = config.protocol in ("tls", "relp-tls")
        self._tls = client_context(config.tls) if tls else None
        self._ready = asyncio.Event()
        own.on_data = self._ready.set
        self._inflight: deque[list[Any]] = deque()  # [bytes total, spool, position, acked at]
        self._sent_total = 0
        self._settling = False  # shutting down: send nothing more, let what was sent confirm
        self.connected = False
        # counters
        self.sent = 0
        self.sent_bytes = 0
        self.connects = 0
        self.connect_failures = 0
        self.disconnects = 0
        self.too_large = 0
        self._last_error = ""
        self._repeats = 0  # the same failure since it was last logged
        self._last_logged = 0.0
        self._announced = False  # "connected" said for this connection

    # -- receive side (the hot path) ----------------------------------------------------------

    def take(
        self,
        offered: list[Offered],
        peer: str,
        received_at: float,
        lossless: bool,
        parse: Callable[[bytes, str, float], SyslogMessage],
    ) -> None:
        """Spool what of a received batch this target wants, in its format, in order."""
        payloads: list[bytes] = []
        add = payloads.append
        fmt, wants = self.config.format, self.wants
        fast_stamp = fmt == "rfc3164-origip"
        stamps = origip_stamps(peer) if fast_stamp else (b"", b"")
        for item in offered:
            if type(item) is tuple:
                frame, end, tag, programname, pri = item
                if wants is not None and not wants(programname, tag, pri, peer):
                    continue
                if fast_stamp and tag:  # no tag: `-` goes in its place (general path)
                    add(stamp_frame(frame, end, tag, stamps))
                elif fmt == "raw":
                    add(frame)
                else:
                    add(render(fmt, parse(frame, peer, received_at), peer))
            else:
                message = cast(SyslogMessage, item)
                origin = message.peer  # the stamped origin, for a message from a relay
                if wants is None or wants(
                    message.programname, message.syslogtag, message.pri, origin
                ):
                    add(render(fmt, message, origin))
        if not payloads:
            return
        if self.config.protocol != "udp":
            # the batch, framed as it goes on the wire, is a few spool records of up to
            # MAX_RECORD_MESSAGES (what damage to one record can cost): one checksum and one
            # header per record, and the sender writes the records as they are
            append, framing = self.spool.append, self._framing
            for start in range(0, len(payloads), MAX_RECORD_MESSAGES):
                chunk = payloads[start : start + MAX_RECORD_MESSAGES]
                append(framing(chunk), received_at, messages=len(chunk), force=lossless)
        else:  # a datagram per message
            if max(map(len, payloads)) > MAX_UDP_PAYLOAD:
                self.too_large += sum(len(p) > MAX_UDP_PAYLOAD for p in payloads)
                payloads = [p[:MAX_UDP_PAYLOAD] for p in payloads]
            self.spool.extend(payloads, received_at, force=lossless)  # refusals: spool counts
        self.spool.flush()

    # -- sender -------------------------------------------------------------------------------

    async def run(self) -> None:
        delay = self.config.reconnect_initial_s
        while True:
            started = time.monotonic()
            try:
                if self.config.protocol == "udp":
                    await self._run_udp()
                    continue
                upstream = await self._connect()
            except (OSError, ssl.SSLError, TimeoutError) as exc:
                _stop_if_cancelled()  # a cancelled TLS connect may surface as an SSL error
                self._connect_failed(exc)
            else:
                await self._session(upstream, started)
                _stop_if_cancelled()
                if time.monotonic() - started >= STEADY_SESSION_S:
                    delay = self.config.reconnect_initial_s
                    continue  # it worked for a while: reconnect at once
            # refused, or accepted and closed at once (a collector refusing our certificate
            # does that): back off
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.config.reconnect_max_s)

    upstream_class: type[_Upstream] = _Upstream
    """The connection's protocol (RelpTarget's answers RELP)."""

    async def _connect(self) -> _Upstream:
        loop, config = asyncio.get_running_loop(), self.config
        async with asyncio.timeout(config.connect_timeout_s):
            _, upstream = await loop.create_connection(
                self.upstream_class,
                config.host,
                config.port,
                ssl=self._tls,
                server_hostname=(config.tls.server_name or config.host) if self._tls else None,
            )
        return upstream

    def _connect_failed(self, exc: BaseException) -> None:
        self.connect_failures += 1
        reason = describe(exc) if isinstance(exc, ssl.SSLError) else (str(exc) or "timed out")
        where = f"{self.config.host}:{self.config.port}"
        if isinstance(exc, ssl.SSLError):
            message = f"TLS handshake with {where} failed: {reason}"
        else:
            message = f"cannot connect to {where}: {reason}"
        self._log_failure(message, "messages are spooled")

    def _log_failure(self, message: str, consequence: str) -> None:
        """A failure as a WARNING: each new one at once, the same one again at most once per
        FAILURE_LOG_INTERVAL_S, with how often it happened meanwhile."""
        now = time.monotonic()
        if message == self._last_error:
            self._repeats += 1
            if now - self._last_logged < FAILURE_LOG_INTERVAL_S:
                return
            consequence += f"; {self._repeats} times since the last report"
        self._last_error, self._repeats, self._last_logged = message, 0, now
        logger.warning("forward %s: %s (%s)", self.config.name, message, consequence)

    def _announce(self, how: str) -> None:
        """Says "connected" once per connection, when the upstream has shown that it takes what is
        sent (a collector refusing the relay's certificate completes the TLS 1.3 handshake,
        then closes: that is not a connection worth announcing)."""
        if self._announced:
            return
        self._announced = True
        self._last_error = ""  # a failure after this is news again
        logger.info(
            "forward %s: connected to %s:%d (%s), %s; %d messages spooled",
            self.config.name, self.config.host, self.config.port, self.config.protocol, how,
            self.pending_records,
        )  # fmt: skip

    async def _session(self, upstream: _Upstream, started: float) -> None:
        assert upstream.transport is not None
        transport = upstream.transport
        sock = transport.get_extra_info("socket")
        if sock is not None and self.config.protocol != "udp":
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.connects += 1
        self.connected = True
        self._announced = False
        logger.debug(
            "forward %s: connection to %s:%d open", self.config.name, self.config.host,
            self.config.port,
        )  # fmt: skip
        committer = asyncio.get_running_loop().create_task(self._commit_forever(transport))
        try:
            await self._pump(upstream, transport)
        finally:
            committer.cancel()
            self._commit_confirmed(transport, closing=True)
            transport.abort()
            self.connected = False
            self.disconnects += 1
            self._rewind()
        exc = upstream.lost.result() if upstream.lost.done() else None
        reason = describe(exc) if exc is not None else "closed by the upstream"
        steady = time.monotonic() - started >= STEADY_SESSION_S
        if self._tls is not None and not self.config.tls.cert_file and exc is None and not steady:
            reason += "; if it requires a client certificate, set forward.tls.cert_file"
        message = f"connection to {self.config.host}:{self.config.port} lost ({reason})"
        if steady:
            self._last_error = ""  # it worked for a while: this loss is news
        # a connection that keeps failing the same way is not logged at every retry
        self._log_failure(message, f"{self.pending_records} messages will be sent again")

    async def _pump(self, upstream: _Upstream, transport: asyncio.Transport) -> None:
        lost = upstream.lost
        while not lost.done():
            if self._settling:
                await lost  # until stop() cancels us
            self._ready.clear()
            spool, records, position = self._read()
            if not records:
                await self._wait(lost, self._ready.wait())
                continue
            data = b"".join(records)  # framed when spooled
            transport.write(data)
            self._sent_total += len(data)
            self._inflight.append([self._sent_total, spool, position, 0.0])
            self.sent += spool.read_messages
            self.sent_bytes += len(data)
            if not upstream.writable.is_set():
                await self._wait(lost, upstream.writable.wait())
            else:
                # a fast upstream takes batch after batch without ever pausing us: let the
                # receive side run between them (a backlog must not starve reception)
                await asyncio.sleep(0)

    @staticmethod
    async def _wait(lost: asyncio.Future[Exception | None], event: Any) -> None:
        waiter = asyncio.ensure_future(event)
        try:
            await asyncio.wait({waiter, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()

    async def settle(self, timeout_s: float) -> None:
        """Shutdown: send nothing more and give what was sent the time to be acknowledged and
        confirmed, so that a clean restart sends no duplicates (bounded by `timeout_s`)."""
        self._settling = True
        deadline = time.monotonic() + timeout_s
        while self.connected and self._inflight and time.monotonic() < deadline:
            await asyncio.sleep(COMMIT_TICK_S)

    def _read(self) -> tuple[Spool, list[bytes], Position]:
        for spool, _ in self._orphans:
            records, position = spool.read(READ_BYTES)
            if records:
                return spool, records, position
        records, position = self.spool.read(READ_BYTES)
        return self.spool, records, position

    async def _commit_forever(self, transport: asyncio.Transport) -> None:
        opened = time.monotonic()
        while True:
            await asyncio.sleep(COMMIT_TICK_S)
            self._commit_confirmed(transport)
            if time.monotonic() - opened >= self.config.confirm_after_s and not self._inflight:
                self._announce("idle")  # up that long with nothing to send: it takes us

    def _commit_confirmed(self, transport: asyncio.Transport, *, closing: bool = False) -> None:
        """Commit what the upstream's kernel acknowledged at least confirm_after_s ago."""
        now = time.monotonic()
        if not closing:
            unacked = _unacknowledged_bytes(transport)
            if unacked is None:  # cannot ask: only a fully written buffer counts
                unacked = self._sent_total if transport.get_write_buffer_size() else 0
            acked_total = self._sent_total - unacked
            for entry in self._inflight:
                if entry[0] > acked_total:
                    break
                if not entry[3]:
                    entry[3] = now
        confirm = self.config.confirm_after_s
        while self._inflight and self._inflight[0][3] and now - self._inflight[0][3] >= confirm:
            _, spool, position, _ = self._inflight.popleft()
            spool.commit(position)
            if not closing:
                self._announce("delivering")
        self._drop_drained_orphans()

    def _rewind(self) -> None:
        self._inflight.clear()
        self.spool.rewind()
        for spool, _ in self._orphans:
            spool.rewind()

    def _drop_drained_orphans(self) -> None:
        for spool, directory in list(self._orphans):
            if spool.pending_records == 0 and not any(e[1] is spool for e in self._inflight):
                spool.close()
                shutil.rmtree(directory, ignore_errors=True)
                self._orphans.remove((spool, directory))
                logger.info("forward %s: drained and removed %s", self.config.name, directory)

    async def _run_udp(self) -> None:
        loop, config = asyncio.get_running_loop(), self.config
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpUpstream(self), remote_addr=(config.host, config.port)
        )
        self.connects += 1
        self.connected = True
        try:
            while True:
                self._ready.clear()
                spool, records, position = self._read()
                if not records:
                    await self._ready.wait()
                    continue
                for payload in records:
                    transport.sendto(payload)
                self.sent += len(records)
                self.sent_bytes += sum(map(len, records))
                spool.commit(position)  # UDP: handed to the kernel is as far as we can know
                self._drop_drained_orphans()
                await asyncio.sleep(0)  # let reception run between batches
        finally:
            self.connected = False
            transport.close()

    # -- state --------------------------------------------------------------------------------

    @property
    def pending_records(self) -> int:
        return self.spool.pending_records + sum(s.pending_records for s, _ in self._orphans)

    @property
    def pending_bytes(self) -> int:
        return self.spool.pending_bytes + sum(s.pending_bytes for s, _ in self._orphans)

    def oldest_age_s(self, now: float) -> float:
        times = [s.oldest_at for s in (self.spool, *(s for s, _ in self._orphans))]
        known = [t for t in times if t is not None]
        return max(0.0, now - min(known)) if known else 0.0

    def stats(self, now: float) -> dict[str, float]:
        spool = self.spool
        return {
            "sent": self.sent,
            "sent_bytes": self.sent_bytes,
            "spooled": spool.appended,
            "dropped_full": spool.dropped_newest,
            "dropped_oldest": spool.dropped_oldest,
            "spool_corrupt_bytes": spool.corrupt_bytes,
            "spool_problems": spool.corrupt_events,
            "connects": self.connects,
            "connect_failures": self.connect_failures,
            "disconnects": self.disconnects,
            "truncated": self.too_large,
            "spool_records": self.pending_records,
            "spool_bytes": self.pending_bytes,
            "spool_max_bytes": self.config.max_spool_bytes,
            "spool_oldest_age_s": self.oldest_age_s(now),
            "connected": float(self.connected),
        }

    def close(self) -> None:
        self.spool.close()
        for spool, _ in self._orphans:
            spool.close()
