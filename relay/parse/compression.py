"""rsyslog's message compression (`omfwd` with `compression.mode="single"`, `@(z9)`): a frame
`z` + zlib data is inflated before parsing, exactly as rsyslog's parser.c `uncompressMessage`
does for every input (imudp, imtcp).

rsyslog inflates into a buffer of maxMessageSize bytes: a frame that does not inflate whole into
it (bad data, a truncated stream, or more than that many bytes: a zip bomb) is kept as it came
(rsyslog logs "Uncompression of a message failed" and parses the frame unchanged, so a message
that merely starts with `z` is not harmed). The output is bounded by `max_bytes` + 1 however
much the data would inflate to.
"""

from __future__ import annotations

import zlib


def inflate(frame: bytes, max_bytes: int) -> bytes:
    """The inflated message if `frame` is `z` + a complete zlib stream of at most `max_bytes`
    bytes, else `frame` itself."""
    if frame[:1] != b"z":
        return frame
    inflater = zlib.decompressobj()
    try:
        # max_length: never more than one byte past what rsyslog's buffer holds
        data = inflater.decompress(memoryview(frame)[1:], max_bytes + 1)
    except zlib.error:
        return frame
    if not inflater.eof or len(data) > max_bytes:
        return frame
    return data
