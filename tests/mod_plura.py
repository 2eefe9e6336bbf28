"""PLURA's mod_plura web-log line (conf/nginx/plura.conf), read back strictly for tests."""

from __future__ import annotations

import re

FIELDS = (
    "Remote-addr", "X-forwarded-for", "Host", "Request-date", "Request-msec", "Request", "Method",
    "Uri", "Referer", "User-Agent", "Cookie", "Req-Content-Type", "Req-Content-Length",
    "Post-body", "Status", "Cache-Control", "Transfer-Encoding", "Resp-Content-Type",
    "Resp-Content-Length", "ModPlura-version",
)  # fmt: skip
"""PLURA's mod_plura keys, in order (MISSION.md)."""
MOD_PLURA_PAIR = re.compile(rb'"([A-Za-z-]+)": "((?:[^"\\]|\\x[0-9A-F]{2})*)"')


def parse_mod_plura(line: bytes) -> dict[str, str]:
    """A mod_plura object -> {key: value}, nginx's `\\xHH` escapes decoded (values as UTF-8).

    Strict: `{`, `"Key": "value"` pairs joined by a bare `,`, `}`; anything else raises.
    """
    assert line.startswith(b"{") and line.endswith(b"}"), line[:80]
    pairs, pos = [], 1
    while True:
        match = MOD_PLURA_PAIR.match(line, pos)
        assert match, f"expecting a pair at col {pos}: {line[pos : pos + 60]!r}"
        pairs.append((match[1].decode(), match[2]))
        pos = match.end()
        if line[pos : pos + 1] != b",":
            break
        pos += 1
    assert line[pos:] == b"}", f"expecting }} at col {pos}: {line[pos : pos + 60]!r}"
    assert len({key for key, _ in pairs}) == len(pairs), "a key twice"
    return {key: _unescape_nginx(value).decode() for key, value in pairs}


def _unescape_nginx(value: bytes) -> bytes:
    return re.sub(rb"\\x([0-9A-F]{2})", lambda m: bytes([int(m[1], 16)]), value)
