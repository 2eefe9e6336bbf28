"""Relay mode end to end: relay A forwards to collector B (both plura-relay, real sockets)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import (
    lf,
    octet,
    read_lines,
    running_server,
    send_tcp,
    send_udp,
    wait_for_lines,
)

MESSAGES = [
    b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8",
    b'<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [x@1 a="1"] event',
    b"<13>Jan  5 10:11:12 host01 app[1]: \xed\x95\x9c\xea\xb8\x80 and \xff",
    b"<14>Jan  5 10:11:12 host01 app hi without a colon",
    b"<13>Jan  5 10:11:12 host01 app: tab\there",
    b"<13>no header at all",
]
SENDERS = ["127.0.0.2", "127.0.0.3"]
FIELDS = ("hostname", "syslogtag", "programname", "pri", "msg")


def _forward(port: int, **extra: Any) -> dict[str, Any]:
    return {"name": "upstream", "host": "127.0.0.1", "port": port, "confirm_after_s": 0.2,
            "reconnect_initial_s": 0.1, "reconnect_max_s": 0.5, **extra}  # fmt: skip


def _collector(tmp_path: Path) -> Any:
    return running_server(
        tmp_path / "b",
        {"origin.trust_origip": True, "origin.trusted_sources": ["127.0.0.1/32"]},
    )


def _relay(tmp_path: Path, port: int, **extra: Any) -> Any:
    # the relay receives on 127.0.0.1 from the "pods" 127.0.0.2-3 and sends from 127.0.0.1
    return running_server(tmp_path / "a", {"forward": [_forward(port, **extra)]})


def _view(lines: list[dict[str, str]]) -> list[tuple[str, ...]]:
    return [tuple(line[k] for k in FIELDS) for line in lines]


def _relayed(lines: list[dict[str, str]]) -> list[tuple[str, ...]]:
    """What the collector has for these lines: the same, except that after a tag without `:`
    MSG starts with a space (as rsyslog's forwarding with `sp-if-no-1st-sp` gives)."""
    relayed = []
    for line in lines:
        msg = line["msg"]
        if not line["syslogtag"].endswith(":") and not msg.startswith(" "):
            msg = " " + msg
        relayed.append(tuple({**line, "msg": msg}[k] for k in FIELDS))
    return relayed


@pytest.mark.parametrize(
    ("protocol", "framing", "transport"),
    [("tcp", "octet-counting", "udp"), ("tcp", "lf", "tcp"), ("udp", "octet-counting", "tcp")],
)
async def test_collector_files_under_the_original_senders(
    tmp_path: Path, protocol: str, framing: str, transport: str
) -> None:
    async with (
        _collector(tmp_path) as b,
        _relay(tmp_path, b.port, protocol=protocol, framing=framing) as a,
    ):
        for source in SENDERS:
            if transport == "udp":
                send_udp(a.port, MESSAGES, source=source)
            else:
                send_tcp(a.port, lf(MESSAGES), source=source)
        for source in SENDERS:
            here = await wait_for_lines(a.file(source), len(MESSAGES))
            there = await wait_for_lines(b.file(source), len(MESSAGES))
            # B's line is what A wrote for the sender itself: the stamp is gone from msg
            assert _view(there) == _relayed(here)
            assert all("origip" not in line["msg"] for line in there)
        assert not b.file("127.0.0.1").exists()  # nothing filed under the relay


async def test_rfc5424_format_carries_the_origin_too(tmp_path: Path) -> None:
    async with _collector(tmp_path) as b, _relay(tmp_path, b.port, format="rfc5424") as a:
        send_udp(a.port, MESSAGES, source="127.0.0.3")
        here = await wait_for_lines(a.file("127.0.0.3"), len(MESSAGES))
        there = await wait_for_lines(b.file("127.0.0.3"), len(MESSAGES))
        # RFC 5424 keeps hostname, programname, PRI and the text; MSG loses the space after
        # an RFC 3164 tag, and the tag becomes APP-NAME[PROCID]
        assert [
            (x["hostname"], x["programname"], x["pri"], x["msg"].lstrip(" ")) for x in there
        ] == [(x["hostname"], x["programname"], x["pri"], x["msg"].lstrip(" ")) for x in here]


async def test_filter_and_raw_format(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path / "b") as b,
        _relay(tmp_path, b.port, format="raw", match={"severity_max": 2}) as a,
    ):
        send_tcp(a.port, octet(MESSAGES), source="127.0.0.2")
        await wait_for_lines(a.file("127.0.0.2"), len(MESSAGES))
        [line] = await wait_for_lines(b.file("127.0.0.1"), 1)  # raw: filed under the relay
        assert line["msg"].startswith(" 'su root' failed")  # only <34> is crit or worse
        await asyncio.sleep(0.3)
        assert len(read_lines(b.file("127.0.0.1"))) == 1


async def test_messages_wait_in_the_spool_until_the_upstream_comes(tmp_path: Path) -> None:
    from tests.integration.conftest import free_port

    port = free_port()
    async with _relay(tmp_path, port) as a:
        send_tcp(a.port, octet(MESSAGES * 50), source="127.0.0.2")
        await wait_for_lines(a.file("127.0.0.2"), len(MESSAGES) * 50)
        stats = await _forward_stats(a.server, "spool_records", len(MESSAGES) * 50)
        assert stats["connected"] == 0
        async with running_server(
            tmp_path / "b",
            {
                "listen.addresses": [f"127.0.0.1:{port}"],
                "origin.trust_origip": True,
                "origin.trusted_sources": ["127.0.0.1/32"],
            },
        ) as b:
            lines = await wait_for_lines(b.file("127.0.0.2"), len(MESSAGES) * 50, timeout_s=15)
            assert _view(lines) == _relayed(read_lines(a.file("127.0.0.2")))
            await _forward_stats(a.server, "spool_records", 0)


async def _forward_stats(
    server: Any,
    key: str,
    value: float | None,
    timeout_s: float = 10,
    until: Callable[[dict[str, float]], bool] | None = None,
) -> dict[str, float]:
    """The relay's forward counters once `key` has reached `value` (or `until` holds)."""
    done = until or (lambda stats: stats.get(key) == value)
    deadline = time.monotonic() + timeout_s
    while True:
        stats = {
            k.split("|")[0].removeprefix("forward_"): v
            for k, v in server.stats().items()
            if k.startswith("forward_")
        }
        if done(stats) or time.monotonic() > deadline:
            assert done(stats), stats
            return stats
        await asyncio.sleep(0.05)


async def test_a_full_spool_in_block_mode_pauses_tcp_senders_and_loses_nothing(
    tmp_path: Path,
) -> None:
    from tests.integration.conftest import free_port

    port = free_port()
    count = 3000
    messages = [b"<13>Jan  5 10:11:12 pod app: seq=%05d %s" % (n, b"z" * 120) for n in range(count)]
    async with _relay(tmp_path, port, max_spool_bytes=65536, on_full="block") as a:
        sending = asyncio.get_running_loop().run_in_executor(
            None, send_tcp, a.port, octet(messages), "127.0.0.2"
        )
        stats = await _forward_stats(a.server, "spool_records", None, until=lambda s: s.get(
            "spool_bytes", 0) >= 65536)  # fmt: skip
        await asyncio.sleep(0.5)  # paused: nothing more is read
        stats = await _forward_stats(a.server, "spool_records", stats["spool_records"])
        assert stats["spool_bytes"] < 65536 + 256 * 1024  # one read (uvloop: 256 KiB) beyond
        assert stats["dropped_full"] == 0
        assert len(read_lines(a.file("127.0.0.2"))) < count  # the rest waits in the sockets
        async with running_server(
            tmp_path / "b",
            {
                "listen.addresses": [f"127.0.0.1:{port}"],
                "origin.trust_origip": True,
                "origin.trusted_sources": ["127.0.0.1/32"],
            },
        ) as b:
            await sending
            lines = await wait_for_lines(b.file("127.0.0.2"), count, timeout_s=20)
            assert [line["msg"][5:10] for line in lines] == [f"{n:05d}" for n in range(count)]
            assert len(read_lines(a.file("127.0.0.2"))) == count


async def test_udp_into_a_full_block_spool_is_dropped_and_counted(tmp_path: Path) -> None:
    from tests.integration.conftest import free_port

    messages = [b"<13>Jan  5 10:11:12 pod app: n=%05d %s" % (n, b"u" * 200) for n in range(600)]
    async with _relay(tmp_path, free_port(), max_spool_bytes=65536, on_full="block") as a:
        for start in range(0, len(messages), 50):
            send_udp(a.port, messages[start : start + 50], source="127.0.0.2")
            await asyncio.sleep(0.01)
        await wait_for_lines(a.file("127.0.0.2"), len(messages))  # the files still get them all
        stats = await _forward_stats(a.server, "spooled", None, until=lambda s: s.get(
            "spooled", 0) + s.get("dropped_full", 0) >= len(messages))  # fmt: skip
        assert stats["dropped_full"] > 0
        assert stats["spooled"] + stats["dropped_full"] == len(messages)
        # a received batch is one spool record: the one that crossed the bound is whole
        assert stats["spool_bytes"] < 65536 + 50 * 300


async def test_spool_of_a_worker_that_no_longer_exists_is_sent_and_removed(
    tmp_path: Path, workers: int
) -> None:
    """`workers` lowered from N+1 to N: worker N's spool is adopted, sent first, removed."""
    from relay.forward.spool import Spool
    from relay.forward.targets import spool_directory

    orphan = spool_directory(str(tmp_path / "a" / "state"), "upstream", workers)
    spool = Spool(orphan, max_bytes=1 << 20)
    for n in range(0, 30, 3):  # spooled as a forwarder does: each batch framed, one record
        batch = [b"<13>Jan  5 10:11:12 pod app: [origip=127.0.0.9] left over %02d" % m
                 for m in range(n, n + 3)]  # fmt: skip
        spool.append(octet(batch), 1.0, messages=len(batch))
    spool.close()
    async with _collector(tmp_path) as b, _relay(tmp_path, b.port):
        lines = await wait_for_lines(b.file("127.0.0.9"), 30)
        assert [line["msg"] for line in lines] == [f" left over {n:02d}" for n in range(30)]
        deadline = time.monotonic() + 10
        while orphan.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not orphan.exists()


async def test_a_clean_restart_of_the_relay_sends_no_duplicates(tmp_path: Path) -> None:
    async with _collector(tmp_path) as b:
        async with _relay(tmp_path, b.port) as a:
            send_tcp(a.port, octet(MESSAGES * 20), source="127.0.0.2")
            await wait_for_lines(b.file("127.0.0.2"), len(MESSAGES) * 20)
        async with _relay(tmp_path, b.port) as a:  # the same spool and cursor
            await _forward_stats(
                a.server, "connected", None, until=lambda s: s.get("connects", 0) >= 1
            )
            await asyncio.sleep(0.5)
            assert len(read_lines(b.file("127.0.0.2"))) == len(MESSAGES) * 20
