"""PLURA's relay stamp `[origip=<ip>]`, as a collector behind a NAT honours it."""

from __future__ import annotations

import pytest

from relay.forward.origin import origin_from_sd, split_origin, stamp
from relay.ingest.limits import SourceFilter
from relay.pipeline import Pipeline
from tests.memory_sink import Lines

CASES = [
    pytest.param(b" [origip=10.0.0.5] hello", "10.0.0.5", b" hello", False, id="ipv4"),
    pytest.param(b"[origip=10.0.0.5] hello", "10.0.0.5", b"hello", False, id="no-leading-space"),
    pytest.param(b" [origip=2001:db8::1] hi", "2001:db8::1", b" hi", False, id="ipv6"),
    pytest.param(b" [origip=2001:DB8:0::1] hi", "2001:db8::1", b" hi", False, id="ipv6-canonical"),
    pytest.param(b" [origip=::ffff:10.1.2.3] m", "10.1.2.3", b" m", False, id="v4-mapped"),
    pytest.param(b" [origip=../../etc/passwd] x", None, b" [origip=../../etc/passwd] x", True, id="path"),
    pytest.param(b" [origip=10.0.0.256] x", None, b" [origip=10.0.0.256] x", True, id="bad-octet"),
    pytest.param(b" [origip=] x", None, b" [origip=] x", False, id="empty"),
    pytest.param(b" [origip=fe80::1%eth0] x", None, b" [origip=fe80::1%eth0] x", True, id="zone-id"),
    pytest.param(b" [origip=fe80::1%*?] x", None, b" [origip=fe80::1%*?] x", True, id="zone-shell"),
    pytest.param(b" [origip=::ffff:10.1.2.3%1] x", None, b" [origip=::ffff:10.1.2.3%1] x", True, id="zone-v4-mapped"),
    pytest.param(b" hello [origip=10.0.0.5]", None, b" hello [origip=10.0.0.5]", False, id="not-a-prefix"),
]  # fmt: skip


@pytest.mark.parametrize(("msg", "origin", "rest", "invalid"), CASES)
def test_split_origin(msg: bytes, origin: str | None, rest: bytes, invalid: bool) -> None:
    assert split_origin(msg) == (origin, rest, invalid)


def test_stamp_round_trips() -> None:
    assert split_origin(stamp(b" hello", "10.9.9.9")) == ("10.9.9.9", b" hello", False)
    assert split_origin(stamp(b"hello", "fd00::5")) == ("fd00::5", b"hello", False)


class Sources:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []

    def observe(
        self, ip: str, hostname: bytes, received_at: float, count: int = 1, via: str | None = None
    ) -> None:
        self.seen.append((ip, via))


def test_trusted_relay_files_under_the_origin_and_untrusted_keeps_the_text() -> None:
    sink, sources = Lines(), Sources()
    pipeline = Pipeline(sink, observer=sources, trusted_relays=SourceFilter(["192.0.2.0/24"]))
    stamped = b"<13>Jan  5 10:11:12 pod-a app: [origip=10.244.2.5] hello"
    pipeline.handle_batch([stamped, stamped.replace(b"10.244.2.5", b"bogus")], "192.0.2.1", 1.0)
    pipeline.handle_batch([stamped], "198.51.100.7", 1.0)  # not a trusted relay
    [line] = sink.files["ceelog-10.244.2.5.log"]
    assert b'"msg":" hello"' in line and b'"hostname":"pod-a"' in line
    [invalid] = sink.files["ceelog-192.0.2.1.log"]  # no valid origin: filed under the peer
    assert b"[origip=bogus]" in invalid
    [untrusted] = sink.files["ceelog-198.51.100.7.log"]
    assert b"[origip=10.244.2.5] hello" in untrusted
    assert sources.seen == [
        ("10.244.2.5", "192.0.2.1"),
        ("192.0.2.1", None),
        ("198.51.100.7", None),
    ]
    assert (pipeline.origin_stamped, pipeline.origin_invalid) == (1, 1)


SD_CASES = [
    pytest.param(b'<13>1 2024-01-05T10:11:12Z h app 42 - [origin ip="10.1.2.3"] hi', "10.1.2.3", False, id="ipv4"),
    pytest.param(b'<13>1 2024-01-05T10:11:12Z h app - - [origin ip="fd00::7"][x@1 a="b"] hi', "fd00::7", False, id="ipv6"),
    pytest.param(b'<13>1 2024-01-05T10:11:12Z h app - - [origin ip="../x"] hi', None, True, id="invalid"),
    pytest.param(b'<13>1 2024-01-05T10:11:12Z h app - - [origin ip="fe80::1%\x1b]0;pwned\x07"] hi', None, True, id="zone-osc"),
    pytest.param(b'<13>1 2024-01-05T10:11:12Z h app - - [origin ip="fe80::1%lo"] hi', None, True, id="zone-id"),
    pytest.param(b'<13>1 2024-01-05T10:11:12Z h app - - [x@1 a="b"][origin ip="10.1.2.3"] hi', None, False, id="not-first"),
    pytest.param(b"<13>Jan  5 10:11:12 h app: [origin ip=\"10.1.2.3\"]", None, False, id="rfc3164"),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "origin", "invalid"), SD_CASES)
def test_origin_from_rfc5424_structured_data(raw: bytes, origin: str | None, invalid: bool) -> None:
    assert origin_from_sd(raw) == (origin, invalid)
