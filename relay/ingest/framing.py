"""TCP framing exactly as rsyslog 8.2302 imtcp does it, plus the UDP size rule.

Owns the byte-level rules of RSYSLOG-BEHAVIOUR.md section 1 as an incremental state machine:
per-frame auto-detection of octet counting (a frame whose first byte is a digit), LF framing
(NUL and CR are data), end-of-connection handling and the size limits. rsyslog works byte by
byte; here LF-framed data, the common case, is cut with `bytes.split` over whole chunks, and only
digit-led frames, oversize frames and partial state take the slower paths. The observable result
is the same as rsyslog's per-byte loop, whatever the chunking of the stream.

Oversize frames (longer than `max_msg_bytes`), per `oversize`:
- "truncate" (default): the first `max_msg_bytes` bytes are the message, the rest of the frame is
  discarded (up to the next LF, or the remaining octet count); never a second, bogus message.
- "split": consecutive `max_msg_bytes` chunks, nothing dropped.
- "rsyslog": what imtcp does: a full buffer is submitted when one more byte of the frame arrives,
  that byte is dropped and the rest of the frame goes on as a new message, without octet-count
  detection. Octet-counted frames up to `max_frame_bytes` are cut the same way; the dropped bytes
  count against the octet count.
Whatever the mode, a full buffer is only submitted when the next byte of the frame arrives (as
rsyslog does), so an octet-counted frame cut short by the end of the connection right at
`max_msg_bytes` is discarded, and one byte later its first chunk has already been delivered.

`extra_delimiter` is imtcp's AddtlFrameDelimiter: one more byte (e.g. NUL, which Python's
SysLogHandler ends its TCP records with) that ends an LF-framed frame as LF does; octet-counted
frames are not affected.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

MAX_MSG_BYTES: Final = 8096  # rsyslog global maxMessageSize default
MAX_FRAME_BYTES: Final = 200_000  # imtcp maxFrameSize default
OVERSIZE_MODES: Final = ("truncate", "split", "rsyslog")

# imtcp stops accumulating an octet count past this value, so longer counts are all "too large".
_COUNT_SATURATED: Final = 200_000_000
_SP: Final = 0x20

# States. _START is "at a frame boundary"; _IN_LF also covers a frame going on after a cut.
_START, _IN_LF, _IN_COUNT, _IN_OCTET, _SKIP_LF, _SKIP_OCTET = range(6)

_DIGIT_FRAME: Final = re.compile(rb"\n[0-9]")  # an LF whose next frame is octet-counted
_DIGITS: Final = re.compile(rb"[0-9]*")
_OCTET_HEAD: Final = re.compile(rb"([1-9][0-9]{0,5}) ")  # a whole `LEN SP` header

_Handler = Callable[[bytes, int, list[bytes]], int]

# octet counts already seen -> their value: a lookup costs a third of int() (a sender's lengths
# repeat); bounded, so hostile variety only costs the int() it would anyway
_COUNTS: dict[bytes, int] = {}
_COUNTS_MAX = 8192


def _count(digits: bytes) -> int:
    count = int(digits)
    if len(_COUNTS) < _COUNTS_MAX:
        _COUNTS[digits] = count
    return count


def truncate_datagram(data: bytes, max_msg_bytes: int = MAX_MSG_BYTES) -> bytes:
    """UDP: one datagram is one message, cut to `max_msg_bytes` (even inside a UTF-8 character)."""
    return data[:max_msg_bytes]


class Framer:
    """One TCP connection's framer: `feed` bytes as they arrive, `close` at end of stream.

    Frames are returned without their LF trailer or octet count. Counters:
    - `truncated`: frames longer than `max_msg_bytes` (once per frame, in every mode);
    - `discarded_bytes`: message bytes never delivered (oversize remainders, rsyslog's dropped
      bytes, partial frames discarded at close, digits of a too-large count past the limit);
    - `framing_errors`: what imtcp logs as a framing error (octet count not followed by SP,
      count 0, count above `max_frame_bytes`);
    - `incomplete_at_close`: octet-counted frames cut by the end of the stream.
    """

    def __init__(
        self,
        *,
        max_msg_bytes: int = MAX_MSG_BYTES,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        oversize: str = "truncate",
        extra_delimiter: int | None = None,
    ) -> None:
        if oversize not in OVERSIZE_MODES:
            raise ValueError(f"oversize: expected one of {OVERSIZE_MODES}, got {oversize!r}")
        if max_msg_bytes < 1:
            raise ValueError(f"max_msg_bytes: expected >= 1, got {max_msg_bytes}")
        self.max_msg_bytes = max_msg_bytes
        self.max_frame_bytes = max_frame_bytes
        self.oversize = oversize
        # AddtlFrameDelimiter: read as LF inside LF-framed data (None: off)
        self._extra = None if extra_delimiter is None else bytes([extra_delimiter])
        self._digit_frame = (
            _DIGIT_FRAME
            if self._extra is None
            else re.compile(b"[\n" + re.escape(self._extra) + b"][0-9]")
        )
        self.truncated = 0
        self.discarded_bytes = 0
        self.framing_errors = 0
        self.incomplete_at_close = 0
        self._state = _START
        self._buf = b""  # the current message so far (never more than max_msg_bytes)
        self._count = 0  # octet count being read, then octets still to come in the frame
        self._cut = False  # the current frame is already counted in `truncated`
        self._lost_digits = 0  # octet-count digits that did not fit in _buf
        # rsyslog drops the byte that did not fit, so its chunks start max+1 bytes apart.
        self._step = max_msg_bytes + (oversize == "rsyslog")
        self._handlers: tuple[_Handler, ...] = (
            self._feed_lf,
            self._feed_lf,
            self._feed_count,
            self._feed_octet,
            self._skip_lf,
            self._skip_octet,
        )

    @property
    def buffered_bytes(self) -> int:
        """Bytes held in partial state (at most `max_msg_bytes`)."""
        return len(self._buf)

    @property
    def in_frame(self) -> bool:
        """A frame has begun and not ended (bytes of it held or being skipped)."""
        return self._state != _START

    def feed(self, data: bytes) -> list[bytes]:
        """Consume the next bytes of the stream; return the frames they complete."""
        out: list[bytes] = []
        pos, end = 0, len(data)
        handlers = self._handlers
        while pos < end:
            pos = handlers[self._state](data, pos, out)
        return out

    def close(self) -> list[bytes]:
        """End of stream: deliver an unterminated LF frame, discard an incomplete octet frame."""
        out: list[bytes] = []
        if self._state == _IN_LF:
            if self._buf:
                out.append(self._buf)
        elif self._state in (_IN_COUNT, _IN_OCTET, _SKIP_OCTET):
            # imtcp: "Incomplete frame at end of stream ... ignoring extra data"
            self.incomplete_at_close += 1
            self.discarded_bytes += len(self._buf) + self._lost_digits
        self._state, self._buf, self._count, self._lost_digits = _START, b"", 0, 0
        return out

    # -- LF framing (the hot path) -------------------------------------------------------------

    def _feed_lf(self, data: bytes, pos: int, out: list[bytes]) -> int:
        """LF framing in bulk, up to the LF before the next frame that starts with a digit."""
        if self._state == _START:
            self._cut = False
            if 0x30 <= data[pos] <= 0x39:
                after = self._octet_frames(data, pos, out)
                if after > pos:
                    return after
                self._state, self._count, self._lost_digits = _IN_COUNT, 0, 0
                return pos
            self._state = _IN_LF
        match = self._digit_frame.search(data, pos)
        stop = match.start() + 1 if match else len(data)
        # Slicing all of a bytes object returns it as is: no copy in the common case.
        chunk = data[pos:stop]
        if self._extra is not None:
            chunk = chunk.replace(self._extra, b"\n")
        parts = chunk.split(b"\n")
        tail = parts.pop()
        if not parts:  # no LF: the current frame goes on
            self._extend_lf(tail, out)
            return stop
        self._end_lf_frames(parts, out)
        self._state, self._buf, self._cut = _START, b"", False
        if tail:
            self._state = _IN_LF
            self._extend_lf(tail, out)
        return stop

    def _end_lf_frames(self, parts: list[bytes], out: list[bytes]) -> None:
        """Deliver complete LF frames; parts[0] ends the frame in progress."""
        if self._buf:
            parts[0] = self._buf + parts[0]
        if max(map(len, parts)) <= self.max_msg_bytes:
            out.extend(filter(None, parts))  # empty frames are dropped
            return
        for i, frame in enumerate(parts):
            if i:
                self._cut = False
            rest = self._overflow(frame, out) if len(frame) > self.max_msg_bytes else frame
            if rest:
                out.append(rest)

    def _extend_lf(self, data: bytes, out: list[bytes]) -> None:
        buf = self._buf + data if self._buf else data
        if len(buf) > self.max_msg_bytes:
            rest = self._overflow(buf, out)
            if rest is None:
                self._state, rest = _SKIP_LF, b""
            buf = rest
        self._buf = buf

    def _skip_lf(self, data: bytes, pos: int, out: list[bytes]) -> int:
        """Truncate mode: discard the rest of an oversize LF frame."""
        lf = data.find(b"\n", pos)
        if self._extra is not None:
            extra = data.find(self._extra, pos, None if lf < 0 else lf)
            lf = lf if extra < 0 else extra
        if lf < 0:
            self.discarded_bytes += len(data) - pos
            return len(data)
        self.discarded_bytes += lf - pos
        self._state = _START
        return lf + 1

    # -- octet counting ------------------------------------------------------------------------

    def _octet_frames(self, data: bytes, pos: int, out: list[bytes]) -> int:
        """The common case in one loop: complete `LEN SP MSG` frames, LEN 1..max_msg_bytes
        (and max_frame_bytes) without leading zeros. Anything else (a partial frame, an odd
        count) is left to the state machine; returns where it stopped."""
        head, end = _OCTET_HEAD.match, len(data)
        limit = min(self.max_msg_bytes, self.max_frame_bytes)
        counts = _COUNTS
        match = head(data, pos)
        while match is not None:
            digits = match[1]
            count = counts.get(digits) or _count(digits)
            start = match.end()
            stop = start + count
            if count > limit or stop > end:
                break
            out.append(data[start:stop])
            pos = stop
            match = head(data, pos)
        return pos

    def _feed_count(self, data: bytes, pos: int, out: list[bytes]) -> int:
        match = _DIGITS.match(data, pos)
        end = match.end() if match else pos  # `[0-9]*` always matches
        if end > pos:
            self._add_digits(data[pos:end])
        if end == len(data):
            return end
        self._end_count(data[end])  # the byte after the digits is consumed, whatever it is
        return end + 1

    def _add_digits(self, digits: bytes) -> None:
        # rsyslog keeps the digits as message text (used if the count turns out too large),
        # silently dropping those past max_msg_bytes.
        room = self.max_msg_bytes - len(self._buf)
        self._lost_digits += max(len(digits) - room, 0)
        self._buf += digits[:room]
        if self._count <= _COUNT_SATURATED:
            significant = digits if self._count else digits.lstrip(b"0")
            if significant:
                value = int(b"%d%s" % (self._count, significant[:10]))
                self._count = min(value, _COUNT_SATURATED + 1)

    def _end_count(self, delimiter: int) -> None:
        if delimiter != _SP:
            self.framing_errors += 1
        lost_digits, self._lost_digits = self._lost_digits, 0
        if 0 < self._count <= self.max_frame_bytes:
            self._state, self._buf = _IN_OCTET, b""
            return
        # Not octet-counted after all: LF framing; a count of 0 is dropped, a too-large count
        # stays as message text (the delimiter byte is lost either way).
        self.framing_errors += 1
        self._state = _IN_LF
        if self._count:
            self.discarded_bytes += lost_digits
        else:
            self._buf = b""

    def _feed_octet(self, data: bytes, pos: int, out: list[bytes]) -> int:
        stop = min(pos + self._count, len(data))
        self._count -= stop - pos
        buf = self._buf + data[pos:stop] if self._buf else data[pos:stop]
        if len(buf) > self.max_msg_bytes:
            rest = self._overflow(buf, out)
            if rest is None:
                self._state, self._buf = (_SKIP_OCTET if self._count else _START), b""
                return stop
            buf = rest
        if self._count:
            self._buf = buf
        else:
            if buf:
                out.append(buf)
            self._state, self._buf = _START, b""
        return stop

    def _skip_octet(self, data: bytes, pos: int, out: list[bytes]) -> int:
        """Truncate mode: discard exactly the rest of an oversize octet-counted frame."""
        stop = min(pos + self._count, len(data))
        self.discarded_bytes += stop - pos
        self._count -= stop - pos
        if not self._count:
            self._state = _START
        return stop

    # -- oversize ------------------------------------------------------------------------------

    def _overflow(self, frame: bytes, out: list[bytes]) -> bytes | None:
        """`frame` (a message so far) exceeds max_msg_bytes: deliver what the mode says.

        Returns what stays as the message in progress, or None in truncate mode, where the
        rest of the frame is to be skipped.
        """
        limit = self.max_msg_bytes
        if not self._cut:
            self._cut = True
            self.truncated += 1
        if self.oversize == "truncate":
            out.append(frame[:limit])
            self.discarded_bytes += len(frame) - limit
            return None
        step, start = self._step, 0
        while len(frame) - start > limit:
            out.append(frame[start : start + limit])
            start += step
            self.discarded_bytes += step - limit
        return frame[start:]
