"""rsyslog's compression (`omfwd compression.mode="single"`, i.e. `@(z9)` / `@@(z9,o)`): a real
rsyslogd sends the same messages, compressed where that is shorter, over UDP and octet-counted
TCP to PLURA's rsyslogd collector and to plura-relay; both must write the same ceelog records.
Frames sent directly (a zip bomb, data that only starts with `z`) must be treated alike too.
"""

from __future__ import annotations

import time
import tracemalloc
import zlib
from pathlib import Path

import pytest

from relay.parse import parse
from relay.parse.compression import inflate
from tests.differential.replay import COMPARED_FIELDS
from tests.differential.test_relay_interop import plura_relay, rsyslogd
from tests.rsyslogd import (
    LISTEN_HOST,
    RsyslogdProcess,
    free_port,
    read_ceelog,
    send,
    wait_for_lines,
)

pytestmark = pytest.mark.differential

MAX_BYTES = 8096
LONG = b"repeated text, compressible " * 70  # ~2 KB: rsyslog compresses it
MESSAGES = [
    b"<34>Oct 11 22:14:15 mymachine su: " + LONG,
    b"<13>Jan  5 10:11:12 host01 app[7]: short",  # under rsyslog's 60-byte threshold
    b"<86>Jan  5 10:11:12 host01 sshd[4242]: \xed\x95\x9c\xea\xb8\x80 " + LONG[:400],
    b'<165>1 2003-10-11T22:14:15.003Z mymachine evntslog 12 ID47 [a@1 b="c"] ' + LONG[:300],
]
DIRECT = [
    b"z" + zlib.compress(b"\0" * 1_000_000, 9),  # a zip bomb: far more than maxMessageSize
    b"z" + zlib.compress(b"<13>Jan  5 10:11:12 h exact: " + b"x" * (MAX_BYTES - 29)),
    b"z" + zlib.compress(b"<13>Jan  5 10:11:12 h over: " + b"x" * (MAX_BYTES - 27)),
    b"z" + zlib.compress(b"<13>Jan  5 10:11:12 h cut: " + LONG)[:-5],  # truncated stream
    b"zabbix_agentd[12]: only starts with z",
    b"z",
]
SENDER_CONF = """\
global(workDirectory="{work}")
module(load="imtcp")
input(type="imtcp" port="{port}" address="{host}" ruleset="fwd")
ruleset(name="fwd") {{
{actions}}}
"""
ACTION = (
    '  action(type="omfwd" target="{host}" port="{port}" protocol="{protocol}"{framing}'
    ' compression.mode="single" ziplevel="9")\n'
)


def sender_conf(port: int, work: Path, targets: list[int]) -> str:
    actions = "".join(
        ACTION.format(host=LISTEN_HOST, port=target, protocol=protocol, framing=framing)
        for protocol, framing in (("udp", ""), ("tcp", ' TCP_Framing="octet-counted"'))
        for target in targets
    )
    return SENDER_CONF.format(work=work, port=port, host=LISTEN_HOST, actions=actions)


def records(path: Path, count: int) -> list[tuple[bytes, ...]]:
    wait_for_lines(path, count, timeout=15)
    time.sleep(0.3)  # a line too many would come right behind
    return sorted(tuple(r[f] for f in COMPARED_FIELDS) for r in read_ceelog(path))


@pytest.mark.timeout(120)
def test_compressed_messages_from_rsyslogd_as_rsyslog_inflates_them(
    tmp_path: Path, rsyslogd_binary: str
) -> None:
    reference_port, sender_port = free_port(), free_port()
    reference_logs = tmp_path / "reference-logs"
    with (
        RsyslogdProcess(reference_logs, reference_port),
        plura_relay(tmp_path / "relay", "") as relay,
    ):
        conf = sender_conf(sender_port, tmp_path / "sender", [reference_port, relay.port])
        with rsyslogd(rsyslogd_binary, tmp_path / "sender", conf, sender_port, udp=False):
            send("tcp-octet", sender_port, LISTEN_HOST, MESSAGES)
            expected = records(reference_logs / "ceelog-127.0.0.1.log", 2 * len(MESSAGES))
            got = records(relay.file("127.0.0.1"), 2 * len(MESSAGES))
        for transport in ("udp", "tcp-octet"):
            for port in (reference_port, relay.port):
                send(transport, port, "127.0.0.2", DIRECT)
        expected_direct = records(reference_logs / "ceelog-127.0.0.2.log", 2 * len(DIRECT))
        got_direct = records(relay.file("127.0.0.2"), 2 * len(DIRECT))
    assert got == expected
    assert len({r[-1] for r in expected}) == len(MESSAGES)  # inflated: every msg readable
    assert got_direct == expected_direct
    assert any(r[COMPARED_FIELDS.index("syslogtag")] == b"exact:" for r in got_direct)


def test_inflate_is_bounded_by_max_message_bytes() -> None:
    bomb = b"z" + zlib.compress(b"\0" * 8_000_000, 9)  # 8 MB of zeros in one frame
    assert len(bomb) <= MAX_BYTES
    tracemalloc.start()
    try:
        assert inflate(bomb, MAX_BYTES) is bomb
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MAX_BYTES + 64 * 1024, peak  # one output buffer, not the inflated data


@pytest.mark.parametrize(
    ("frame", "raw"),
    [
        pytest.param(
            b"z" + zlib.compress(b"<13>Jan  5 10:11:12 h a: hi"),
            b"<13>Jan  5 10:11:12 h a: hi",
            id="compressed",
        ),
        pytest.param(b"z" + zlib.compress(b"x" * MAX_BYTES), b"x" * MAX_BYTES, id="exactly-fits"),
        pytest.param(b"z" + zlib.compress(b"x" * (MAX_BYTES + 1)), None, id="one-over-kept"),
        pytest.param(b"z" + zlib.compress(b"abc") + b"trailing", b"abc", id="trailing-ignored"),
        pytest.param(b"z" + zlib.compress(b"abc")[:-1], None, id="checksum-cut-off"),
        pytest.param(b"zz", None, id="not-zlib"),
        pytest.param(b"<13>z not compressed", None, id="plain"),
    ],
)
def test_parse_inflates_rsyslogs_compressed_frames(frame: bytes, raw: bytes | None) -> None:
    message = parse(frame, received_at=1.0, peer="10.0.0.1")
    assert message.raw == (frame if raw is None else raw)
