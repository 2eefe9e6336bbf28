"""TCP slots against one greedy or slow sender, on a real server and real sockets: the
per-source connection cap, the frame timeout (slow-loris) and idle closes logged in aggregate."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from relay.config import ConfigError, load_config
from tests.integration.conftest import lf, running_server, send_tcp, wait_for_lines

MSG = b"<13>Jan  5 10:11:12 h app: x"


def _stats(srv: Any) -> dict[str, float]:
    stats: dict[str, float] = srv.server.stats()
    return stats


async def _until(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def _connect(port: int, source: str) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


@pytest.mark.timeout(30)
async def test_one_source_cannot_take_every_slot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    overrides = {"listen.max_connections": 6, "listen.max_connections_per_source": 3}
    async with running_server(tmp_path, overrides) as srv:
        greedy = [_connect(srv.port, "127.0.0.2") for _ in range(8)]
        try:
            await _until(lambda: _stats(srv)["tcp_refused_per_source"] == 5)
            assert _stats(srv)["tcp_connections"] == 3
            # another sender still gets in and is heard
            await asyncio.to_thread(send_tcp, srv.port, lf([MSG + b" other"]), "127.0.0.3")
            lines = await wait_for_lines(srv.file("127.0.0.3"), 1)
            assert [line["msg"] for line in lines] == [" x other"]
            # a slot given back can be taken again
            greedy.pop(0).close()  # one of the three let in
            await _until(lambda: _stats(srv)["tcp_connections"] == 2)
            greedy.append(_connect(srv.port, "127.0.0.2"))
            await _until(lambda: _stats(srv)["tcp_connections"] == 3)
            assert _stats(srv)["tcp_refused_per_source"] == 5
            await _until(lambda: "max_connections_per_source" in caplog.text, 15)
            refusals = [r for r in caplog.messages if "max_connections_per_source" in r]
            assert refusals == ["refused 5 TCP connection(s) over max_connections_per_source (3)"
                                " (last from 127.0.0.2)"]  # fmt: skip
        finally:
            for sock in greedy:
                sock.close()


@pytest.mark.timeout(30)
async def test_a_frame_sent_a_byte_at_a_time_counts_as_idle(tmp_path: Path) -> None:
    overrides = {"listen.idle_timeout_s": 60.0, "listen.frame_timeout_s": 0.6}
    async with running_server(tmp_path, overrides) as srv:
        loris_reader, loris = await asyncio.open_connection(
            "127.0.0.1", srv.port, local_addr=("127.0.0.2", 0)
        )
        _, steady = await asyncio.open_connection("127.0.0.1", srv.port)
        started = time.monotonic()
        closed_after = None
        for n in range(40):  # 4 s: a byte every 0.1 s, never a whole frame; a frame each 0.1 s
            loris.write(b"<")
            steady.write(MSG + b" %d\n" % n)
            await asyncio.sleep(0.1)
            if closed_after is None and loris_reader.at_eof():
                closed_after = time.monotonic() - started
        try:
            assert closed_after is not None and closed_after < 2.0
            assert _stats(srv)["tcp_idle_closed"] == 1
            assert _stats(srv)["tcp_connections"] == 1  # the steady sender kept its slot
            lines = await wait_for_lines(srv.file("127.0.0.1"), 40)
            assert len(lines) == 40
        finally:
            for writer in (loris, steady):
                writer.close()


@pytest.mark.timeout(30)
async def test_idle_closes_are_logged_in_aggregate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running_server(tmp_path, {"listen.idle_timeout_s": 0.5}) as srv:
        silent = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(30)]
        try:
            await _until(lambda: _stats(srv).get("tcp_idle_closed", 0) == 30)
            await asyncio.sleep(0.3)  # the round's summary line
            lines = [r for r in caplog.messages if "idle TCP connection" in r]
            counts = [int(re.findall(r"closed (\d+) idle", line)[0]) for line in lines]
            assert sum(counts) == 30
            assert len(lines) <= 2, lines  # one per round, not one per connection
        finally:
            for sock in silent:
                sock.close()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("listen.max_connections_per_source", 0),
        ("listen.max_connections_per_source", 1_000_001),
        ("listen.frame_timeout_s", -1.0),
        ("listen.frame_timeout_s", 86_401.0),
    ],
)
def test_connection_limits_are_bounded(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=key.split(".")[1]):
        load_config(None, {key: value})


@pytest.mark.timeout(30)
async def test_a_reset_connection_is_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A reset may have cost what the sender had not sent yet: that cannot be counted, the
    reset can."""
    async with running_server(tmp_path, {"listen.idle_timeout_s": 0.4}) as srv:
        sock = _connect(srv.port, "127.0.0.4")
        sock.sendall(lf([MSG]))
        await wait_for_lines(srv.file("127.0.0.4"), 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # linger 0: the kernel sends RST, not FIN
        await _until(lambda: _stats(srv)["tcp_resets"] == 1)
        await _until(lambda: "reset by the sender" in caplog.text)
        assert "1 TCP connection(s) reset by the sender: what it had not sent yet is lost (last" \
            " from 127.0.0.4)" in caplog.messages  # fmt: skip
