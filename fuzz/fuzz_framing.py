"""atheris harness: the TCP framer in each oversize mode, chunked as the input says.

    python fuzz/make_corpus.py
    python fuzz/fuzz_framing.py -dict=fuzz/syslog.dict -max_len=256 fuzz/corpus-framing

Input: 4 parameter bytes (max_msg_bytes, max_frame_bytes, mode, chunking), then the stream (see
`decode`). Checks, raising on the first violation (fuzz/invariants.py: check_framer_mode):
feed/close never raise; buffered_bytes <= max_msg_bytes after every feed; frames are non-empty
and at most max_msg_bytes long (in every mode); the whole stream at once and the chunking give
the same frames and counters; the frames equal the byte-at-a-time imtcp reference of
tests/ingest/test_framing.py (checked against a real rsyslogd); and when no frame was oversize, they
equal the reference's frames in the other two modes as well. The one-byte-at-a-time and
all-modes-at-once variants of these checks run in tests/fuzz (hypothesis): per input they cost
too much for a fuzzer.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports(include=["relay"]):
    import relay.ingest.framing  # noqa: F401

from fuzz.invariants import check_framer_mode, chunked

HEADER_BYTES = 4
DEFAULT_MAX_MSG_BYTES = 8096
DEFAULT_MAX_FRAME_BYTES = 200_000
MODES = ("truncate", "split", "rsyslog")


def decode(data: bytes) -> tuple[int, int, str, list[bytes], bytes]:
    """(max_msg_bytes, max_frame_bytes, mode, chunks, stream) from the input.

    Byte 0: max_msg_bytes 1..48 (0xFF: the default 8096). Byte 1: max_frame_bytes 0..63 (0xFF:
    the default 200000). Byte 2: the oversize mode. Byte 3: the chunking: with the high bit
    set, two pieces cut at (byte & 0x7F) modulo the length + 1; else pieces of a cycle of
    three sizes: 1..8, 0..3 (0: an empty feed) and 1..4.
    """
    head = data[:HEADER_BYTES].ljust(HEADER_BYTES, b"\xff")
    stream = data[HEADER_BYTES:]
    max_msg = DEFAULT_MAX_MSG_BYTES if head[0] == 0xFF else 1 + head[0] % 48
    max_frame = DEFAULT_MAX_FRAME_BYTES if head[1] == 0xFF else head[1] % 64
    mode = MODES[head[2] % 3]
    cut = head[3]
    if cut & 0x80:
        at = (cut & 0x7F) % (len(stream) + 1)
        chunks = [stream[:at], stream[at:]]
    else:
        chunks = chunked(stream, [1 + (cut & 7), (cut >> 3) & 3, 1 + (cut >> 5)])
    return max_msg, max_frame, mode, chunks, stream


def test_one_input(data: bytes) -> None:
    max_msg, max_frame, mode, chunks, stream = decode(data)
    check_framer_mode(stream, chunks, mode=mode, max_msg_bytes=max_msg, max_frame_bytes=max_frame)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
