"""atheris harness: parse -> render -> pipeline on one frame (the fuzzer's input, as is).

    python fuzz/make_corpus.py
    python fuzz/fuzz_parse.py -dict=fuzz/syslog.dict -max_len=8192 fuzz/corpus-parse

Checks, raising on the first violation (fuzz/invariants.py): parse never raises and returns a
well-formed message equal to the general path's (default options, or fromhost + a small
max_bytes + rsyslog_sd, see `options`); parsing takes linear time; render gives one JSON line
with the 11 keys in order carrying the fields byte for byte; the pipeline's fused hot path
writes exactly render(parse(frame)), for the frame alone and in a batch with its LF-separated
parts.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# coverage feedback comes from relay/ only (not from the checks or the standard library)
with atheris.instrument_imports(include=["relay"]):
    pass

from fuzz.invariants import (
    PARSE_BUDGET_S,
    check_parse,
    check_parse_time,
    check_pipeline,
    check_render,
)

FROMHOST = b"relay-peer"
DEFAULTS: dict[str, Any] = {}


def options(data: bytes) -> dict[str, Any]:
    """Default options for inputs whose last byte is even; else fromhost, rsyslog_sd and a
    small max_bytes, which only matter on the general path (max_bytes cuts sanitized frames)."""
    if not data or not data[-1] & 1:
        return DEFAULTS
    return {"fromhost": FROMHOST, "max_bytes": 1 + len(data) % 97, "rsyslog_sd": True}


def test_one_input(data: bytes) -> None:
    kwargs = options(data)
    start = time.perf_counter()
    message = check_parse(data, **kwargs)
    if time.perf_counter() - start > PARSE_BUDGET_S:
        check_parse_time(data)  # times parse alone, best of 3: raises if it really is slow
    check_render(message)
    if b"\n" in data:  # a batch: the frame and its LF-separated parts
        check_pipeline([data, *data.split(b"\n", 3)], **kwargs)
    else:
        check_pipeline([data], messages=[message], **kwargs)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
