"""RELP 1.0 as librelp (rsyslog's omrelp/imrelp) speaks it: frames, offers, responses. No I/O.

A frame is `TXNR SP COMMAND SP DATALEN [SP DATA] LF` (librelp src/relpframe.c):
- TXNR: 1 to 9 digits; a client numbers its commands 1, 2, ... and wraps from 999,999,999 to 1
  (`next_txnr`); the server answers each with an `rsp` frame carrying the same TXNR, and sends
  its one unsolicited frame, the `serverclose` hint, with TXNR 0;
- COMMAND: 1 to 32 ASCII letters (`open`, `syslog`, `close`, `rsp`, `serverclose`);
- DATALEN: 1 to 9 digits; with DATALEN 0 the LF follows the digits at once, otherwise one SP and
  exactly DATALEN bytes of data (which may contain anything, LF too), then the LF trailer.
A receiver refuses a DATALEN above its maximum before reading the data (librelp's default
maximum is 128 KiB, and its default oversize mode aborts the session).

Session (src/copen.c, scsyslog.c, cclose.c, relpsess.c): the client's first command is `open`
with its offers (`relp_version=0`, `relp_software=...`, `commands=syslog`, one per line); the
server answers `rsp` with `200 OK` LF and its own offers, or `500 ...` and ends the session. A
`syslog` frame's data is one message; its `rsp` is `200 OK` once the server has taken it (or
`500 ...`). `close` is answered by an `rsp` with no data, then the server sends `serverclose`
and closes the socket. librelp ends a session on any framing error, out-of-sequence TXNR,
unknown command or second `open`, sending `serverclose` first (the client then reconnects and
resends what was not acknowledged, so a protocol error costs duplicates, never messages).

`RelpDecoder` cuts a byte stream into `RelpFrame`s (both directions); `encode` and the helpers
build frames; `ServerSession` is the server's state machine (frames in, replies and messages
out) that ingest.relp_listener drives; `parse_rsp`, `open_offer` and `next_txnr` serve a client.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

RELP_VERSION: Final = 0  # what librelp 1.x offers as relp_version
MAX_TXNR: Final = 999_999_999
MAX_FIELD_DIGITS: Final = 9  # TXNR and DATALEN
MAX_COMMAND_CHARS: Final = 32
DEFAULT_MAX_DATA_BYTES: Final = 128 * 1024  # librelp RELP_DFLT_MAX_DATA_SIZE
DEFAULT_WINDOW: Final = 128  # librelp RELP_DFLT_WINDOW_SIZE: unacknowledged frames per session
MAX_RSP_TEXT_CHARS: Final = 80  # the status text of an rsp, as librelp reads it
SUPPORTED_COMMANDS: Final = ("syslog",)  # the commands a server session enables
SOFTWARE: Final = ("plura-relay", "https://github.com/plura/plura-relay")

_HEADER: Final = re.compile(rb"([0-9]{1,9}) ([A-Za-z]{1,32}) ([0-9]{1,9})([ \n])")
_HEADER_MAX_BYTES: Final = 9 + 1 + 32 + 1 + 9 + 1
_LF: Final = 0x0A
_SP: Final = 0x20


class RelpError(ValueError):
    """A RELP protocol violation; `reason` says what was expected and where.

    Raised by `RelpDecoder.feed`, `frames` holds the frames completed before the bad byte in
    that call (their acknowledgements may still go out before the session ends).
    """

    def __init__(self, reason: str, frames: Sequence[RelpFrame] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.frames = list(frames)


@dataclass(frozen=True, slots=True)
class RelpFrame:
    txnr: int
    command: bytes
    data: bytes


def next_txnr(txnr: int) -> int:
    """The transaction number after `txnr`: 1 after 999,999,999 (and after 0, or out of range)."""
    return 1 if txnr >= MAX_TXNR or txnr < 1 else txnr + 1


def encode(txnr: int, command: bytes, data: bytes = b"") -> bytes:
    """One frame on the wire. ValueError on a TXNR or command librelp would not read."""
    if not 0 <= txnr <= MAX_TXNR:
        raise ValueError(f"txnr: expected 0..{MAX_TXNR}, got {txnr}")
    if not (0 < len(command) <= MAX_COMMAND_CHARS and command.isalpha() and command.isascii()):
        raise ValueError(f"command: expected 1..{MAX_COMMAND_CHARS} ASCII letters, got {command!r}")
    if len(data) > MAX_TXNR:
        raise ValueError(f"data: expected at most {MAX_TXNR} bytes, got {len(data)}")
    head = b"%d %s %d" % (txnr, command, len(data))
    return head + b" " + data + b"\n" if data else head + b"\n"


# -- the decoder --------------------------------------------------------------------------------


class RelpDecoder:
    """Incremental frame decoder: `feed` bytes as they arrive, in pieces split anywhere.

    Raises RelpError on the first byte that cannot belong to a frame, with the frames completed
    before it; the stream cannot be resynchronised after that (the session must end), so every
    later `feed` raises the same error.
    """

    def __init__(self, max_data_bytes: int = DEFAULT_MAX_DATA_BYTES) -> None:
        if max_data_bytes < 0:
            raise ValueError(f"max_data_bytes: expected >= 0, got {max_data_bytes}")
        self.max_data_bytes = max_data_bytes
        self._buf = bytearray()
        self._need = 0  # bytes the frame at the buffer start still needs beyond what is held
        self._failed: RelpError | None = None

    @property
    def buffered_bytes(self) -> int:
        return len(self._buf)

    @property
    def in_frame(self) -> bool:
        """A frame has begun and not ended."""
        return bool(self._buf)

    def feed(self, data: bytes) -> list[RelpFrame]:
        if self._failed is not None:
            raise RelpError(self._failed.reason)
        frames: list[RelpFrame] = []
        try:
            self._parse(data, frames)
        except RelpError as exc:
            self._failed = exc
            self._buf.clear()
            raise RelpError(exc.reason, frames) from None
        return frames

    def _parse(self, data: bytes, frames: list[RelpFrame]) -> None:
        self._buf += data
        if self._need > len(data):  # the data of a long frame still arriving: nothing to parse
            self._need -= len(data)
            return
        self._need = 0
        buf = self._buf
        pos = 0
        while pos < len(buf):
            match = _HEADER.match(buf, pos)
            if match is None:
                _check_header_prefix(buf[pos : pos + _HEADER_MAX_BYTES])
                break  # a valid but incomplete header
            txnr, command, datalen, sep = match.groups()
            length = int(datalen)
            start = match.end()
            if length == 0:
                if sep != b"\n":
                    raise RelpError("expecting LF after DATALEN 0, got SP")
                frames.append(RelpFrame(int(txnr), bytes(command), b""))
                pos = start
                continue
            if sep != b" ":
                raise RelpError(f"expecting SP and {length} bytes of data after DATALEN, got LF")
            if length > self.max_data_bytes:
                raise RelpError(f"DATALEN {length} over the maximum of {self.max_data_bytes}")
            end = start + length
            if end >= len(buf):
                self._need = end + 1 - len(buf)
                break
            if buf[end] != _LF:
                raise RelpError(
                    f"expecting LF trailer after {length} bytes of data, got {buf[end]:#04x}"
                )
            frames.append(RelpFrame(int(txnr), bytes(command), bytes(buf[start:end])))
            pos = end + 1
        del buf[:pos]


def _check_header_prefix(head: bytes | bytearray) -> None:
    """Raise RelpError unless `head` can begin a frame header (`_HEADER` did not match it)."""
    fields = head.split(b" ", 3)
    txnr = fields[0]
    if not txnr.isdigit() and txnr:
        bad = next(b for b in txnr if not 0x30 <= b <= 0x39)
        raise RelpError(f"expecting TXNR digits at frame start, got {bad:#04x}")
    if len(txnr) > MAX_FIELD_DIGITS:
        raise RelpError(f"TXNR longer than {MAX_FIELD_DIGITS} digits")
    if len(fields) == 1:
        return
    if not txnr:
        raise RelpError("expecting TXNR digits at frame start, got SP")
    command = fields[1]
    if not (command.isalpha() and command.isascii()) and command:
        bad = next(b for b in command if not (0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A))
        raise RelpError(f"expecting COMMAND letters after TXNR, got {bad:#04x}")
    if len(command) > MAX_COMMAND_CHARS:
        raise RelpError(f"COMMAND longer than {MAX_COMMAND_CHARS} letters")
    if len(fields) == 2:
        return
    if not command:
        raise RelpError("expecting COMMAND letters after TXNR, got SP")
    datalen = fields[2]
    digits = len(datalen) - len(datalen.lstrip(b"0123456789"))
    if digits > MAX_FIELD_DIGITS:
        raise RelpError(f"DATALEN longer than {MAX_FIELD_DIGITS} digits")
    if digits < len(datalen) or len(fields) == 4:
        rest = datalen[digits:] or b" "
        if digits == 0:
            raise RelpError(f"expecting DATALEN digits after COMMAND, got {rest[0]:#04x}")
        raise RelpError(f"expecting SP or LF after DATALEN, got {rest[0]:#04x}")


# -- offers ---------------------------------------------------------------------------------


def parse_offers(data: bytes) -> dict[str, list[str]]:
    """An `open` frame's data (or what follows `200 OK` LF in its rsp) as name -> values.

    One offer a line, `name=value,value`; a line without `=` is a name without values.
    """
    offers: dict[str, list[str]] = {}
    for line in data.decode("utf-8", "replace").split("\n"):
        if not line:
            continue
        name, _, values = line.partition("=")
        offers[name] = [value for value in values.split(",") if value]
    return offers


def format_offers(offers: Mapping[str, Sequence[str]]) -> bytes:
    return "\n".join(f"{name}={','.join(values)}" for name, values in offers.items()).encode()


def software_offer(software: Sequence[str] = SOFTWARE, version: str = "") -> list[str]:
    """librelp's relp_software order: name, version, URL."""
    name, *rest = software
    return [name, *([version] if version else []), *rest]


def open_offer(
    txnr: int = 1,
    *,
    version: str = "",
    software: Sequence[str] = SOFTWARE,
    commands: Iterable[str] = SUPPORTED_COMMANDS,
) -> bytes:
    """The client's `open` frame with its offers, as librelp orders them."""
    offers = {
        "relp_version": [str(RELP_VERSION)],
        "relp_software": software_offer(software, version),
        "commands": list(commands),
    }
    return encode(txnr, b"open", format_offers(offers))


def parse_rsp(data: bytes) -> tuple[int, str, bytes]:
    """An rsp frame's data -> (status code, status text, what follows the text's LF).

    librelp answers `close` with an rsp without data, which is a RelpError here: a client
    treats any rsp to its close as the end of the session.
    """
    if len(data) < 4 or not data[:3].isdigit() or data[3] != _SP:
        raise RelpError(f"expecting a 3-digit status code and SP in rsp, got {data[:4]!r}")
    text, _, rest = data[4:].partition(b"\n")
    return int(data[:3]), text[:MAX_RSP_TEXT_CHARS].decode("utf-8", "replace"), rest


# -- the server's replies -----------------------------------------------------------------------


def ok(txnr: int) -> bytes:
    return encode(txnr, b"rsp", b"200 OK")


def error(txnr: int, text: str) -> bytes:
    """`rsp` with status 500 and `text` (cut to 76 bytes: librelp reads 80 of status and text)."""
    return encode(txnr, b"rsp", b"500 " + text.encode()[: MAX_RSP_TEXT_CHARS - 4])


def serverclose() -> bytes:
    return encode(0, b"serverclose")


def answer_offers(
    client: Mapping[str, Sequence[str]],
    *,
    version: str = "",
    software: Sequence[str] = SOFTWARE,
    commands: Sequence[str] = SUPPORTED_COMMANDS,
) -> dict[str, list[str]]:
    """The server's offers for a client's: RelpError if the client cannot be served.

    As librelp's selectOffers: relp_version is the lower of the two (it must be a number), the
    commands those both sides have, of which `syslog` is required.
    """
    offered = client.get("relp_version") or []
    if not offered or not offered[0].isdigit():
        raise RelpError(f"expecting a number as relp_version offer, got {offered!r}")
    common = [command for command in commands if command in (client.get("commands") or [])]
    if "syslog" not in common:
        raise RelpError("required command not supported by client")
    return {
        "relp_version": [str(min(int(offered[0]), RELP_VERSION))],
        "relp_software": software_offer(software, version),
        "commands": common,
    }


def open_response(txnr: int, offers: Mapping[str, Sequence[str]]) -> bytes:
    """The rsp to an accepted `open`: `200 OK` LF and the server's offers."""
    return encode(txnr, b"rsp", b"200 OK\n" + format_offers(offers))


# -- the server session ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """What the server does with one frame.

    `reply` goes out now, after the acks of earlier messages; `message` (with `txnr`) is a
    syslog message to deliver and acknowledge with `ok(txnr)` once it is safe; `close`: end
    the session once `reply` is out; `error`: the protocol violation that ends it.
    """

    reply: bytes = b""
    message: bytes | None = None
    txnr: int = 0
    close: bool = False
    error: str = ""


class ServerSession:
    """One server-side RELP session: `on_frame` for each decoded frame, `on_error` for a
    decoder RelpError. Expects `open` first and TXNRs in sequence from the open's on."""

    def __init__(self, *, version: str = "", software: Sequence[str] = SOFTWARE) -> None:
        self.version = version
        self.software = software
        self.opened = False
        self.closed = False
        self.expected_txnr = 0  # 0: whatever the open carries (librelp clients start at 1)
        self.client_offers: dict[str, list[str]] = {}

    def on_frame(self, frame: RelpFrame) -> Step:
        if self.closed:
            return Step(close=True, error="frame after the session ended")
        if frame.txnr == 0 or (self.expected_txnr and frame.txnr != self.expected_txnr):
            want = self.expected_txnr or "1.."
            return self._fail(f"TXNR {frame.txnr} out of sequence, expected {want}")
        self.expected_txnr = next_txnr(frame.txnr)
        command = frame.command
        if command == b"syslog":
            if not self.opened:
                return self._fail("syslog before open", frame.txnr)
            return Step(message=frame.data, txnr=frame.txnr)
        if command == b"open":
            return self._open(frame)
        if command == b"close":
            self.closed = True
            return Step(reply=encode(frame.txnr, b"rsp") + serverclose(), close=True)
        return self._fail(f"unexpected command {command.decode('ascii')!r}", frame.txnr)

    def on_error(self, exc: RelpError) -> Step:
        return self._fail(exc.reason)

    def serverclose(self) -> bytes:
        """The hint to send when the server stops; the session is over."""
        self.closed = True
        return serverclose()

    def _open(self, frame: RelpFrame) -> Step:
        if self.opened:
            return self._fail("open of an already open session", frame.txnr)
        self.client_offers = parse_offers(frame.data)
        try:
            offers = answer_offers(self.client_offers, version=self.version, software=self.software)
        except RelpError as exc:
            return self._fail(exc.reason, frame.txnr)
        self.opened = True
        return Step(reply=open_response(frame.txnr, offers))

    def _fail(self, reason: str, txnr: int = 0) -> Step:
        """End the session: an error rsp when there is a TXNR to answer, then serverclose."""
        self.closed = True
        reply = (error(txnr, reason) if txnr else b"") + serverclose()
        return Step(reply=reply, close=True, error=reason)
