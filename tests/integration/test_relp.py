"""The RELP listener on a real server, spoken to by a raw-socket client: the handshake, a window
of unacknowledged frames, acks only once the line is in its file, protocol errors (a clean
close and a counted metric, never a junk line), and a RELP client on the plain TCP port.

rsyslog's own omrelp against it: tests/differential/test_relp_kill.py.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from relay.ingest.relp import (
    RelpDecoder,
    RelpFrame,
    encode,
    open_offer,
    parse_offers,
    parse_rsp,
)
from tests.integration.conftest import read_lines, running_server

OPEN = open_offer(version="test", software=("test-client", "x"))
SERVERCLOSE = RelpFrame(0, b"serverclose", b"")


def message(n: int) -> bytes:
    return b"<13>Jan  5 10:11:12 host01 app: message %d" % n


def relp_port(srv: Any, kind: str = "relp") -> int:
    return next(port for k, _, port in srv.server.bound if k == kind)


class Client:
    """A blocking RELP client on a raw socket (run in a thread)."""

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.decoder = RelpDecoder(1 << 20)
        self.frames: list[RelpFrame] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self, count: int = 1) -> list[RelpFrame]:
        """The next `count` frames (fewer if the server closes)."""
        while len(self.frames) < count:
            data = self.sock.recv(65536)
            if not data:
                break
            self.frames += self.decoder.feed(data)
        got, self.frames = self.frames[:count], self.frames[count:]
        return got

    def read_to_end(self) -> list[RelpFrame]:
        frames = self.read(1 << 30)
        return frames

    def close(self) -> None:
        self.sock.close()


def metric(srv: Any, name: str) -> float:
    url = f"http://127.0.0.1:{srv.server.health.port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


async def metric_until(srv: Any, name: str, value: float, timeout_s: float = 10.0) -> None:
    """Wait until the metric (summed over its labels) has `value` (read off the loop)."""
    deadline = time.monotonic() + timeout_s
    while (got := await asyncio.to_thread(metric, srv, name)) != value:
        assert time.monotonic() < deadline, f"{name} is {got}, expected {value}"
        await asyncio.sleep(0.05)


RELP = {"listen.relp.addresses": ["127.0.0.1:0"]}


@pytest.mark.timeout(60)
async def test_open_syslog_close_each_ack_after_its_line_is_written(tmp_path: Path) -> None:
    async with running_server(tmp_path, RELP) as srv:
        path = srv.file("127.0.0.1")

        def session() -> list[int]:
            client = Client(relp_port(srv))
            client.send(OPEN)
            (answer,) = client.read()
            code, text, offers = parse_rsp(answer.data)
            assert (answer.txnr, answer.command, code, text) == (1, b"rsp", 200, "OK")
            assert parse_offers(offers)["commands"] == ["syslog"]
            assert parse_offers(offers)["relp_version"] == ["0"]
            written = []
            for n in range(2, 12):  # one at a time: the file is read as each ack arrives
                client.send(encode(n, b"syslog", message(n)))
                (ack,) = client.read()
                assert (ack.txnr, ack.command, ack.data) == (n, b"rsp", b"200 OK")
                written.append(len(read_lines(path)))
            client.send(encode(12, b"close"))
            assert client.read_to_end() == [RelpFrame(12, b"rsp", b""), SERVERCLOSE]
            client.close()
            return written

        written = await asyncio.to_thread(session)
        assert written == list(range(1, 11))  # the line was in the file when its ack came
        assert [line["msg"] for line in read_lines(path)] == [f" message {n}" for n in range(2, 12)]
        await metric_until(srv, "plura_relay_relp_acks_total", 10)


@pytest.mark.timeout(60)
async def test_a_window_of_unacknowledged_frames(tmp_path: Path) -> None:
    overrides = {**RELP, "listen.relp.window": 64}
    async with running_server(tmp_path, overrides) as srv:

        def session() -> list[RelpFrame]:
            client = Client(relp_port(srv))
            frames = [encode(n, b"syslog", message(n)) for n in range(2, 1002)]
            client.send(OPEN + b"".join(frames))  # a thousand without waiting for one ack
            answers = client.read(1001)
            client.send(encode(1002, b"close"))
            answers += client.read_to_end()
            client.close()
            return answers

        answers = await asyncio.to_thread(session)
        assert [a.txnr for a in answers] == [*range(1, 1003), 0]  # in TXNR order
        assert all(a.data == b"200 OK" for a in answers[1:1001])
        lines = read_lines(srv.file("127.0.0.1"))
        assert [line["msg"] for line in lines] == [f" message {n}" for n in range(2, 1002)]


@pytest.mark.timeout(60)
async def test_oversize_messages_are_cut_as_over_tcp(tmp_path: Path) -> None:
    overrides = {**RELP, "listen.max_message_bytes": 480}
    async with running_server(tmp_path, overrides) as srv:
        long = message(2) + b" " + b"x" * 1000

        def session() -> list[RelpFrame]:
            client = Client(relp_port(srv))
            client.send(
                OPEN + encode(2, b"syslog", long) + encode(3, b"syslog", message(3) + b"\n")
            )
            answers = client.read(3)
            client.close()
            return answers

        answers = await asyncio.to_thread(session)
        assert [(a.txnr, a.data[:3]) for a in answers] == [(1, b"200"), (2, b"200"), (3, b"200")]
        lines = read_lines(srv.file("127.0.0.1"))
        header = len(b"<13>Jan  5 10:11:12 host01 app:")
        assert lines[0]["msg"] == long[header:480].decode()  # cut at 480 bytes
        assert lines[1]["msg"] == " message 3"  # a trailing LF dropped, as rsyslog does


ERRORS = [
    pytest.param(b"hello\n", [SERVERCLOSE], id="garbage"),
    pytest.param(b"<13>Jan  5 10:11:12 host01 app: plain syslog\n", [SERVERCLOSE], id="plain"),
    pytest.param(OPEN + encode(5, b"syslog", message(5)), [SERVERCLOSE], id="bad-txnr"),
    pytest.param(OPEN + b"2 syslog 999999 ", [SERVERCLOSE], id="oversize"),
    pytest.param(OPEN + b"2 syslog 1234567890 x", [SERVERCLOSE], id="datalen-too-long"),
    pytest.param(OPEN + encode(2, b"frob", b"x"), [b"2 rsp", SERVERCLOSE], id="unknown-command"),
    pytest.param(encode(1, b"syslog", message(1)), [b"1 rsp", SERVERCLOSE], id="syslog-first"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("wire, expected", ERRORS)
async def test_protocol_errors_close_cleanly_and_are_counted(
    tmp_path: Path, wire: bytes, expected: list[Any]
) -> None:
    async with running_server(tmp_path, RELP) as srv:

        def session() -> list[RelpFrame]:
            client = Client(relp_port(srv))
            client.send(wire)
            answers = client.read_to_end()  # the server closes
            client.close()
            return answers

        answers = await asyncio.to_thread(session)
        if wire.startswith(OPEN):
            assert parse_rsp(answers.pop(0).data)[0] == 200
        assert len(answers) == len(expected)
        for answer, want in zip(answers, expected, strict=True):
            if isinstance(want, bytes):
                assert encode(answer.txnr, answer.command, answer.data).startswith(want)
                assert parse_rsp(answer.data)[0] == 500
            else:
                assert answer == want
        await metric_until(srv, "plura_relay_relp_protocol_errors_total", 1)
        assert not srv.file("127.0.0.1").exists()  # never a junk line


@pytest.mark.timeout(60)
async def test_a_relp_client_on_the_tcp_port_is_told_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with running_server(tmp_path, RELP) as srv:
        tcp_port = next(port for k, _, port in srv.server.bound if k == "tcp")

        def attempt() -> list[RelpFrame]:
            client = Client(tcp_port)
            client.send(OPEN[:3])  # omrelp's open, in two pieces
            time.sleep(0.05)
            client.send(OPEN[3:] + encode(2, b"syslog", message(2)))
            answers = client.read_to_end()
            client.close()
            return answers

        for _ in range(3):
            (answer,) = await asyncio.to_thread(attempt)
            assert answer.txnr == 1 and parse_rsp(answer.data)[0] == 500
            assert "use listen.relp or omfwd" in parse_rsp(answer.data)[1]
        await metric_until(srv, "plura_relay_tcp_relp_refused_total", 3)
        assert not srv.file("127.0.0.1").exists()
        if srv.server.bound and not hasattr(srv.server, "sink"):
            return  # workers: their logs are not captured here
        warned = [m for m in caplog.messages if "speaks RELP" in m]
        assert len(warned) == 1 and "listen.relp" in warned[0] and "omfwd" in warned[0]


@pytest.mark.timeout(60)
async def test_stop_sends_serverclose_after_the_acks(tmp_path: Path) -> None:
    async with running_server(tmp_path, RELP) as srv:
        client = await asyncio.to_thread(Client, relp_port(srv))
        await asyncio.to_thread(client.send, OPEN + encode(2, b"syslog", message(2)))
        assert [f.txnr for f in await asyncio.to_thread(client.read, 2)] == [1, 2]
    assert await asyncio.to_thread(client.read_to_end) == [SERVERCLOSE]
    client.close()


@pytest.mark.timeout(60)
async def test_fsynced_acks(tmp_path: Path) -> None:
    async with running_server(tmp_path, {**RELP, "listen.relp.ack": "fsynced"}) as srv:

        def session() -> list[RelpFrame]:
            client = Client(relp_port(srv))
            client.send(OPEN + b"".join(encode(n, b"syslog", message(n)) for n in range(2, 52)))
            answers = client.read(51)
            client.close()
            return answers

        answers = await asyncio.to_thread(session)
        assert [a.txnr for a in answers] == list(range(1, 52))
        assert len(read_lines(srv.file("127.0.0.1"))) == 50


@pytest.mark.timeout(60)
async def test_lines_that_cannot_be_written_are_not_acknowledged(tmp_path: Path) -> None:
    async with running_server(tmp_path, RELP) as srv:
        srv.file("127.0.0.1").mkdir(parents=True)  # a directory where the file goes: EISDIR

        def session() -> list[RelpFrame]:
            client = Client(relp_port(srv))
            client.send(OPEN + encode(2, b"syslog", message(2)) + encode(3, b"syslog", message(3)))
            answers = client.read_to_end()
            client.close()
            return answers

        answers = await asyncio.to_thread(session)
        assert answers[0].txnr == 1 and parse_rsp(answers[0].data)[0] == 200
        assert answers[1:] == [SERVERCLOSE]  # no ack for 2 and 3: the sender resends them
        await metric_until(srv, "plura_relay_relp_sessions_closed_unacknowledged_total", 1)
