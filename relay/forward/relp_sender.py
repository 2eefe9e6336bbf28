"""A `[[forward]]` target over RELP (`protocol = "relp"` / `"relp-tls"`): acknowledged delivery.

The spool is the same as for TCP (records of up to 64 messages, octet-counted as spooled); what
differs is when a record counts as delivered. Every message goes as one RELP `syslog` command
with its own transaction number, at most `relp_window` of them unanswered, and a record is
committed only when the upstream has answered `200` for every message of it: no kernel-ack
guesswork, no `confirm_after_s`. After a lost connection, a refusal (`rsp` with an error code),
a `serverclose` or an answer that does not come within `relp_ack_timeout_s`, the session is
dropped and everything after the committed position is sent again on the next one: duplicates
are possible (what was answered but not yet committed, what the upstream took but could not
answer), a gap is not. The wire protocol is relay.ingest.relp's (shared with the listener).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from typing import Any, cast

from relay.config import Forward
from relay.forward.spool import Spool
from relay.forward.target import STEADY_SESSION_S, Target, _Upstream
from relay.ingest import relp
from relay.tls import describe

logger = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 64 * 1024  # an `rsp` carries a status line and offers, never messages
CLOSE_WAIT_S = 1.0  # at stop, how long the upstream has to answer our `close`


class _RelpUpstream(_Upstream):
    """The connection, decoding what the upstream sends; `fail` drops it with a reason."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = relp.RelpDecoder(MAX_ANSWER_BYTES)
        self.on_frame: Any = None  # Callable[[relp.RelpFrame], None], set by the session
        self.reason = ""
        self.undecodable = False  # what the upstream sent is not RELP

    def data_received(self, data: bytes) -> None:
        error = None
        try:
            frames = self.decoder.feed(data)
        except relp.RelpError as exc:  # the answers before the bad byte still count
            frames, error = exc.frames, exc
        for frame in frames:
            if self.reason or self.on_frame is None:
                return
            self.on_frame(frame)
        if error is not None:
            self.undecodable = True
            self.fail(f"RELP protocol error from the upstream: {error.reason}")

    def fail(self, reason: str) -> None:
        if not self.reason:
            self.reason = reason
        if self.transport is not None:
            self.transport.abort()


class _Refused(Exception):
    """The upstream did not accept the session (its `open` answer)."""


def split_octet_counted(data: bytes) -> list[bytes]:
    """The messages of a spooled record (`LEN SP MSG`..., as `frame_octet_counted` made it).
    A record is checked by its CRC before it is read, so a malformed one cannot occur; should
    it, the rest goes as one message rather than nothing."""
    messages: list[bytes] = []
    at, end = 0, len(data)
    while at < end:
        space = data.find(b" ", at, at + 12)
        digits = data[at:space]
        if space < 0 or not digits.isdigit() or space + 1 + int(digits) > end:
            messages.append(data[at:])
            break
        start = space + 1
        messages.append(data[start : start + int(digits)])
        at = start + int(digits)
    return messages


class RelpTarget(Target):
    """One `[[forward]]` with `protocol = "relp"` or `"relp-tls"`.

    `_inflight` holds, in spool order, one entry per record read: [messages not yet answered,
    spool, position after it, unused, messages of it sent]; the head is committed when its
    count is 0. `_unacked` maps the transaction numbers unanswered to (entry, sent at)."""

    upstream_class = _RelpUpstream

    def __init__(
        self, config: Forward, own: Spool, orphans: list[tuple[Spool, Any]] | None = None
    ) -> None:
        super().__init__(config, own, orphans)
        self._unacked: dict[int, tuple[list[Any], float]] = {}
        self._queue: deque[tuple[bytes, list[Any]]] = deque()  # read, not yet sent
        self._txnr = 0
        self._room = asyncio.Event()  # an answer came: the window may have room
        self._open_answer: asyncio.Future[relp.RelpFrame] | None = None
        self._close_answer: asyncio.Future[relp.RelpFrame] | None = None
        self._upstream: _RelpUpstream | None = None
        self._opened = False  # this session's open was answered 200
        self._resend_due = 0  # messages sent on a lost session, to be sent again
        self._unanswered = 0  # of the session that ended last
        self.acked = 0
        self.resent = 0
        self.rsp_errors = 0
        self.protocol_errors = 0

    # -- one session ----------------------------------------------------------------------------

    async def _session(self, upstream: _Upstream, started: float) -> None:
        link = cast(_RelpUpstream, upstream)
        assert link.transport is not None
        transport = link.transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.connects += 1
        self.connected = True
        self._announced = False
        self._upstream = link
        link.on_frame = self._on_frame
        watchdog = asyncio.get_running_loop().create_task(self._watch_answers(link))
        try:
            await self._open(link)
            await self._pump_relp(link)
        except _Refused as exc:
            link.fail(str(exc))
        except TimeoutError:
            link.fail(f"no answer to the RELP open within {self.config.connect_timeout_s:g}s")
        finally:
            watchdog.cancel()
            transport.abort()
            self.connected = False
            self.disconnects += 1
            self.protocol_errors += link.undecodable
            self._upstream = None
            self._end_session()
        self._session_lost(link, started)

    def _session_lost(self, link: _RelpUpstream, started: float) -> None:
        if self._settling:
            logger.info("forward %s: RELP session closed", self.config.name)
            return  # our own `close` at stop: nothing went wrong
        exc = link.lost.result() if link.lost.done() else None
        reason = link.reason or (describe(exc) if exc is not None else "closed by the upstream")
        steady = time.monotonic() - started >= STEADY_SESSION_S
        bare = self._tls is not None and not self.config.tls.cert_file
        if bare and not link.reason and exc is None and not steady:
            reason += "; if it requires a client certificate, set forward.tls.cert_file"
        message = f"RELP session with {self.config.host}:{self.config.port} ended ({reason})"
        if steady:
            self._last_error = ""  # it worked for a while: this loss is news
        self._log_failure(
            message,
            f"{self._unanswered} sent and not acknowledged will be sent again; "
            f"{self.pending_records} messages spooled",
        )

    async def _open(self, link: _RelpUpstream) -> None:
        """`open` with our offers; the answer must be `200` and take the `syslog` command."""
        assert link.transport is not None
        self._txnr = 1
        answer = asyncio.get_running_loop().create_future()
        self._open_answer = answer
        link.transport.write(relp.open_offer(1))
        async with asyncio.timeout(self.config.connect_timeout_s):
            await asyncio.wait({answer, link.lost}, return_when=asyncio.FIRST_COMPLETED)
        if not answer.done():
            return  # lost before answering: _pump_relp sees it and ends
        code, text, offers = _answer(answer.result())
        if code != 200:
            raise _Refused(f"the upstream refused the RELP session: {code} {text}")
        commands = offers.get("commands", [])
        if "syslog" not in commands:
            raise _Refused(f"the upstream does not take RELP syslog (commands={commands!r})")
        self._opened = True

    def _on_frame(self, frame: relp.RelpFrame) -> None:
        link = self._upstream
        if link is None:
            return
        command = frame.command.decode("ascii", "replace")
        if command == "serverclose" and self._close_answer is not None:
            link.reason = link.reason or "closed (stopping)"  # the end of our `close`
        elif command == "serverclose":
            link.fail("the upstream closed the session (serverclose)")
        elif command != "rsp":
            self.protocol_errors += 1
            link.fail(f"unexpected RELP command {command!r} from the upstream")
        elif self._open_answer is not None and not self._open_answer.done():
            if frame.txnr != 1:
                self.protocol_errors += 1
                link.fail(f"answer to transaction {frame.txnr} before the open was answered")
            else:
                self._open_answer.set_result(frame)
        elif self._close_answer is not None and frame.txnr == self._txnr:
            if not self._close_answer.done():
                self._close_answer.set_result(frame)
        else:
            self._answered(link, frame)

    def _answered(self, link: _RelpUpstream, frame: relp.RelpFrame) -> None:
        item = self._unacked.pop(frame.txnr, None)
        if item is None:
            self.protocol_errors += 1
            link.fail(f"answer to transaction {frame.txnr}, which is not outstanding")
            return
        entry, _ = item
        code, text, _ = _answer(frame)
        if code == 0:
            self.protocol_errors += 1
            link.fail(f"answer to transaction {frame.txnr} is {text}")
            return
        if code != 200:
            self.rsp_errors += 1
            link.fail(f"the upstream refused a message: {code} {text}")
            return
        self.acked += 1
        entry[0] -= 1
        self._room.set()
        self._commit_answered()

    def _commit_answered(self) -> None:
        """Commit every record at the head whose messages are all answered."""
        committed = False
        while self._inflight and self._inflight[0][0] <= 0:
            _, spool, position, _, _ = self._inflight.popleft()
            spool.commit(position)
            committed = True
        if committed:
            self._announce("delivering")
            self._drop_drained_orphans()

    async def _watch_answers(self, link: _RelpUpstream) -> None:
        """Drops the session when the oldest message has waited `relp_ack_timeout_s`."""
        limit = self.config.relp_ack_timeout_s
        tick = min(limit / 4, 0.5)
        while True:
            await asyncio.sleep(tick)
            if self._unacked:
                _, sent_at = next(iter(self._unacked.values()))
                if time.monotonic() - sent_at > limit:
                    link.fail(f"no answer for {limit:g}s")
                    return
            elif self._opened and not self._inflight and not self._announced:
                self._announce("idle")  # open answered and nothing to send: it takes us

    # -- sending --------------------------------------------------------------------------------

    async def _pump_relp(self, link: _RelpUpstream) -> None:
        lost, window = link.lost, self.config.relp_window
        assert link.transport is not None
        transport = link.transport
        while not lost.done():
            if self._settling:
                await lost  # until stop() cancels us
            room = window - len(self._unacked)
            if room <= 0:
                self._room.clear()
                await self._wait(lost, self._room.wait())
                continue
            if not link.writable.is_set():
                await self._wait(lost, link.writable.wait())
                continue
            if not self._queue and not self._read_record():
                await self._wait(lost, self._ready.wait())
                continue
            self._send(transport, room)
            await asyncio.sleep(0)  # let reception run between batches

    def _read_record(self) -> bool:
        """Queue the messages of the next spooled record (orphaned spools first)."""
        self._ready.clear()
        for spool in (*(s for s, _ in self._orphans), self.spool):
            records, position = spool.read(1)  # one record: the commit unit
            if records:
                messages = [m for record in records for m in split_octet_counted(record)]
                entry: list[Any] = [len(messages), spool, position, 0.0, 0]
                self._inflight.append(entry)
                if not messages:  # nothing in it to send (cannot happen): done
                    self._commit_answered()
                self._queue.extend((message, entry) for message in messages)
                return True
        return False

    def _send(self, transport: asyncio.Transport, room: int) -> None:
        frames: list[bytes] = []
        now = time.monotonic()
        while self._queue and room > 0:
            message, entry = self._queue.popleft()
            self._txnr = relp.next_txnr(self._txnr)
            frames.append(relp.encode(self._txnr, b"syslog", message))
            self._unacked[self._txnr] = (entry, now)
            entry[4] += 1
            room -= 1
        data = b"".join(frames)
        transport.write(data)
        self.sent += len(frames)
        self.sent_bytes += len(data)
        again = min(self._resend_due, len(frames))
        self.resent += again
        self._resend_due -= again

    def _end_session(self) -> None:
        """What the session had sent and not committed goes again, from the committed
        position."""
        self._resend_due += sum(entry[4] for entry in self._inflight)
        self._unanswered = len(self._unacked)
        self._unacked.clear()
        self._queue.clear()
        self._open_answer = self._close_answer = None
        self._opened = False
        self._rewind()

    async def settle(self, timeout_s: float) -> None:
        """Shutdown: let what was sent be answered (bounded), then end the session with
        `close`, so that the upstream knows it was not a failure."""
        self._settling = True
        deadline = time.monotonic() + timeout_s
        while self.connected and self._unacked and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        link = self._upstream
        if link is None or link.transport is None or link.lost.done() or link.reason:
            return
        answer = asyncio.get_running_loop().create_future()
        self._close_answer = answer
        self._txnr = relp.next_txnr(self._txnr)
        link.transport.write(relp.encode(self._txnr, b"close"))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_WAIT_S):
                await asyncio.wait({answer, link.lost}, return_when=asyncio.FIRST_COMPLETED)
        link.reason = link.reason or "closed by us (stopping)"
        link.transport.close()

    def stats(self, now: float) -> dict[str, float]:
        return super().stats(now) | {
            "relp_acked": self.acked,
            "relp_resent": self.resent,
            "relp_refused": self.rsp_errors,
            "relp_protocol_errors": self.protocol_errors,
        }


def _answer(frame: relp.RelpFrame) -> tuple[int, str, dict[str, list[str]]]:
    """(code, text, offers) of an `rsp` frame; a frame that is no valid answer is code 0."""
    try:
        code, text, rest = relp.parse_rsp(frame.data)
    except relp.RelpError as exc:
        return 0, f"unreadable ({exc.reason})", {}
    return code, text, relp.parse_offers(rest)
