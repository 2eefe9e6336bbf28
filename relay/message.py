"""The value type that crosses every stage, the facility/severity tables, and how a value from
the wire is shown to a human (`printable`).

Fields are bytes, not str: rsyslog passes bytes >= 0x80 through untouched (invalid UTF-8
included), and the ceelog line must carry them byte for byte.
"""

from __future__ import annotations

import msgspec

INVALID_PRI = -1
"""`pri` of a message whose PRI part was present but not valid (rsyslog's "invld")."""

DEFAULT_PRI = 13
"""user.notice: what rsyslog assumes when a message has no PRI at all."""

FACILITY_NAMES: tuple[str, ...] = (
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news",
    "uucp", "cron", "authpriv", "ftp", "ntp", "audit", "alert", "clock",
    "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
)  # fmt: skip
SEVERITY_NAMES: tuple[str, ...] = (
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
)  # fmt: skip


class SyslogMessage(msgspec.Struct, gc=False):
    """One received syslog message, parsed as rsyslog parses it.

    `hostname` is already resolved: the HOSTNAME field when the message has one, else the
    sender's name (FROMHOST). `timestamp` is the header timestamp as received (b"" if none),
    kept for forwarding; the ceelog line uses `received_at` instead.
    """

    pri: int
    hostname: bytes
    syslogtag: bytes
    programname: bytes
    msg: bytes
    timestamp: bytes
    received_at: float
    peer: str
    """FROMHOST-IP: the socket peer's address (IPv4-mapped IPv6 already unmapped)."""
    raw: bytes = b""
    """The frame as received (before sanitizing), for the `raw` template and forwarding."""

    @property
    def facility(self) -> int:
        return self.pri >> 3 if self.pri >= 0 else -1

    @property
    def severity(self) -> int:
        return self.pri & 7 if self.pri >= 0 else 7


Offered = tuple[bytes, int, bytes, bytes, int] | SyslogMessage
"""What a forward target is offered: a fast-path frame as (frame, end of its header, tag,
programname, pri), sent from the batch's peer; or a parsed message (its sender in `peer`)."""


def printable(text: str) -> str:
    """`text` with every character that is not printable (C0 and C1 controls, ESC, BEL, DEL,
    bidi overrides, lone surrogates) as a Python escape (`\\x1b`, `\\u202e`): remote input must
    not reach an operator's terminal or log viewer raw."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def printable_json(document: str) -> str:
    """A JSON document with every non-printable character inside its strings written as a JSON
    `\\uXXXX` escape: the same data, safe on a terminal. Raw LFs are the document's own layout
    (a JSON encoder escapes them inside strings), so they stay."""
    if document.isprintable():
        return document
    return "".join(ch if ch.isprintable() or ch == "\n" else _json_escape(ch) for ch in document)


def _json_escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000
    high, low = 0xD800 + (code >> 10), 0xDC00 + (code & 0x3FF)
    return f"\\u{high:04x}\\u{low:04x}"
