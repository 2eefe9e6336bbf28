"""The server end to end through real sockets on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from relay.children.registry import load_children
from tests.integration.conftest import (
    ServerProcess,
    free_port,
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
]
EXPECTED = [
    ("mymachine", "su:", " 'su root' failed for lonvick on /dev/pts/8", "auth.crit"),
    ("mymachine.example.com", "evntslog", "event", "local4.notice"),
    ("host01", "app[1]:", " 한글 and \udcff", "user.notice"),
]
TIMEGENERATED = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d$"


def _fields(lines: list[dict[str, str]]) -> list[tuple[str, str, str, str]]:
    return [(x["hostname"], x["syslogtag"], x["msg"], x["pri-text"]) for x in lines]


@pytest.mark.parametrize("transport", ["udp", "tcp-lf", "tcp-octet"])
async def test_messages_land_in_per_source_files(tmp_path: Path, transport: str) -> None:
    async with running_server(tmp_path) as srv:
        sources = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        for source in sources:
            if transport == "udp":
                send_udp(srv.port, MESSAGES, source=source)
            else:
                framing = lf if transport == "tcp-lf" else octet
                send_tcp(srv.port, framing(MESSAGES), source=source)
        for source in sources:
            lines = await wait_for_lines(srv.file(source), len(MESSAGES))
            assert _fields(lines) == EXPECTED
            for line in lines:
                assert __import__("re").match(TIMEGENERATED, line["timegenerated"])
    names = sorted(p.name for p in srv.log_dir.iterdir())
    assert names == [f"ceelog-{s}.log" for s in sources]


async def test_file_and_directory_modes(tmp_path: Path) -> None:
    old = os.umask(0o077)  # the modes must not depend on the umask
    try:
        async with running_server(tmp_path, {"output.log_dir": str(tmp_path / "a" / "b")}) as srv:
            send_udp(srv.port, MESSAGES[:1], source="127.0.0.9")
            await wait_for_lines(srv.log_dir / "ceelog-127.0.0.9.log", 1)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a" / "b" / "ceelog-127.0.0.9.log").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o755


async def test_file_name_never_comes_from_message_text(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        send_udp(srv.port, [b"<13>Jan  5 10:11:12 ../../etc/passwd app: x"], source="127.0.0.5")
        lines = await wait_for_lines(srv.file("127.0.0.5"), 1)
    assert lines[0]["hostname"] == "127.0.0.5"  # `/` is not a hostname character
    assert [p.name for p in srv.log_dir.iterdir()] == ["ceelog-127.0.0.5.log"]


async def test_ipv6_listener(tmp_path: Path) -> None:
    async with running_server(tmp_path, {"listen.addresses": ["[::1]:0"]}) as srv:
        send_udp(srv.port, MESSAGES[:1], source="::1", host="::1")
        await wait_for_lines(srv.file("::1"), 1)  # two senders: no order between them otherwise
        send_tcp(srv.port, lf(MESSAGES[1:2]), source="::1", host="::1")
        lines = await wait_for_lines(srv.file("::1"), 2)
    assert _fields(lines) == EXPECTED[:2]


async def test_dual_stack_listener_writes_ipv4_peers_as_ipv4(tmp_path: Path) -> None:
    async with running_server(tmp_path, {"listen.addresses": ["[::]:0"]}) as srv:
        send_udp(srv.port, MESSAGES[:1], source="127.0.0.6")
        await wait_for_lines(srv.file("127.0.0.6"), 1)
        send_tcp(srv.port, lf(MESSAGES[1:2]), source="127.0.0.6")
        lines = await wait_for_lines(srv.file("127.0.0.6"), 2)
    assert _fields(lines) == EXPECTED[:2]
    assert not any("ffff" in p.name for p in srv.log_dir.iterdir())


async def test_many_concurrent_tcp_connections_keep_per_source_order(tmp_path: Path) -> None:
    sources = [f"127.0.{i // 200}.{2 + i % 200}" for i in range(300)]
    count = 50

    async def one(source: str) -> None:
        _reader, writer = await asyncio.open_connection(
            "127.0.0.1", srv.port, local_addr=(source, 0)
        )
        for seq in range(count):
            writer.write(b"<13>Jan  5 10:11:12 h app: seq=%d\n" % seq)
            if seq % 10 == 0:
                await writer.drain()
        writer.close()
        await writer.wait_closed()

    async with running_server(tmp_path) as srv:
        await asyncio.gather(*(one(s) for s in sources))
        for source in sources:
            lines = await wait_for_lines(srv.file(source), count)
            assert [x["msg"] for x in lines] == [f" seq={i}" for i in range(count)]


async def test_partial_frame_at_close_is_delivered(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        send_tcp(
            srv.port,
            b"<13>Jan  5 10:11:12 host01 app: complete\n<13>Jan  5 10:11:12 host01 app: no LF",
        )
        lines = await wait_for_lines(srv.file("127.0.0.1"), 2)
    assert [x["msg"] for x in lines] == [" complete", " no LF"]


async def test_oversize_udp_is_truncated_and_tcp_truncated_without_bogus_message(
    tmp_path: Path,
) -> None:
    big = b"<14>Jan  5 10:11:12 host01 longapp[1]: " + b"x" * 9000
    async with running_server(tmp_path) as srv:
        send_udp(srv.port, [big], source="127.0.0.7")
        send_tcp(srv.port, lf([big, b"<13>Jan  5 10:11:12 host01 app: after"]), source="127.0.0.8")
        udp = await wait_for_lines(srv.file("127.0.0.7"), 1)
        tcp = await wait_for_lines(srv.file("127.0.0.8"), 2)
        await asyncio.sleep(0.2)
        tcp = read_lines(srv.file("127.0.0.8"))
    assert len(udp) == 1 and len(udp[0]["msg"]) == 8096 - 38
    assert [len(x["msg"]) for x in tcp] == [8096 - 38, 6]


async def test_registry_records_children(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        send_udp(srv.port, MESSAGES, source="127.0.0.2")
        send_udp(srv.port, MESSAGES[:1], source="127.0.0.3")
        await wait_for_lines(srv.file("127.0.0.3"), 1)
        await wait_for_lines(srv.file("127.0.0.2"), 3)
    children = {c.ip: c for c in load_children(srv.state_dir)}
    assert set(children) == {"127.0.0.2", "127.0.0.3"}
    assert children["127.0.0.2"].messages == 3
    assert children["127.0.0.2"].hostname == "host01"  # the last message's
    assert children["127.0.0.3"].hostname == "mymachine"


async def test_hook_announces_each_child_once_across_restarts(tmp_path: Path) -> None:
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    # hooks run concurrently: one file per call
    hook = {"children.hook_command": ["sh", "-c", f"cat > $(mktemp -p {hook_dir})"]}

    async def session(sources: list[str]) -> None:
        async with running_server(tmp_path, hook) as srv:
            for source in sources:
                send_udp(srv.port, MESSAGES[:1], source=source)
                await wait_for_lines(srv.file(source), 1)
            await _wait_until(lambda: _announced(hook_dir) >= len(seen | set(sources)))
            seen.update(sources)

    seen: set[str] = set()
    await session(["127.0.0.2", "127.0.0.3"])
    await session(["127.0.0.2", "127.0.0.3", "127.0.0.4"])
    await asyncio.sleep(0.3)
    announced = [json.loads(p.read_text())["ip"] for p in hook_dir.iterdir()]
    assert sorted(announced) == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]


async def test_failing_hook_is_retried_until_it_succeeds(tmp_path: Path) -> None:
    tries, done = tmp_path / "tries", tmp_path / "done"
    script = f"echo x >> {tries}; [ $(wc -l < {tries}) -ge 3 ] || exit 1; cat > {done}"
    overrides = {
        "children.hook_command": ["sh", "-c", script],
        "children.hook_backoff_initial_s": 0.1,
        "children.hook_backoff_max_s": 0.3,
    }
    async with running_server(tmp_path, overrides) as srv:
        send_udp(srv.port, MESSAGES[:1], source="127.0.0.2")
        await _wait_until(lambda: done.exists() and done.stat().st_size > 0, timeout_s=15)
        # reception went on while the hook failed
        send_udp(srv.port, MESSAGES[:1], source="127.0.0.2")
        assert len(await wait_for_lines(srv.file("127.0.0.2"), 2)) == 2
    assert json.loads(done.read_text())["ip"] == "127.0.0.2"
    assert len(tries.read_text().split()) == 3
    assert all(c.announced for c in load_children(srv.state_dir))


def test_sigterm_writes_everything_accepted_and_exits_0(
    server_process: Callable[..., ServerProcess],
) -> None:
    srv = server_process()
    total = 20_000
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.sendall(b"".join(b"<13>Jan  5 10:11:12 h app: seq=%d\n" % i for i in range(total)))
    assert srv.stop(signal.SIGTERM) == 0
    msgs = [x["msg"] for x in read_lines(srv.file("127.0.0.1"))]
    assert msgs == [f" seq={i}" for i in range(total)]


def test_sigint_also_drains(server_process: Callable[..., ServerProcess]) -> None:
    srv = server_process()
    send_udp(srv.port, MESSAGES)
    time.sleep(0.3)
    assert srv.stop(signal.SIGINT) == 0
    assert len(read_lines(srv.file("127.0.0.1"))) == 3


def test_sighup_reopens_files_after_rename(server_process: Callable[..., ServerProcess]) -> None:
    srv = server_process()
    send_udp(srv.port, MESSAGES[:1], source="127.0.0.2")
    _wait_sync(lambda: len(read_lines(srv.file("127.0.0.2"))) == 1)
    rotated = srv.log_dir / "ceelog-127.0.0.2.log.1"
    srv.file("127.0.0.2").rename(rotated)
    srv.send_signal(signal.SIGHUP)
    _wait_sync(lambda: "reopening" in srv.log)
    send_udp(srv.port, MESSAGES[1:2], source="127.0.0.2")
    _wait_sync(lambda: len(read_lines(srv.file("127.0.0.2"))) == 1)
    assert srv.stop() == 0
    assert _fields(read_lines(rotated)) == EXPECTED[:1]
    assert _fields(read_lines(srv.file("127.0.0.2"))) == EXPECTED[1:2]


def test_registry_survives_restart(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    first = server_process()
    send_udp(first.port, MESSAGES, source="127.0.0.2")
    _wait_sync(lambda: len(read_lines(first.file("127.0.0.2"))) == 3)
    assert first.stop() == 0
    second = server_process()
    send_udp(second.port, MESSAGES[:1], source="127.0.0.2")
    send_udp(second.port, MESSAGES[:1], source="127.0.0.3")
    _wait_sync(lambda: len(read_lines(second.file("127.0.0.3"))) == 1)
    assert second.stop() == 0
    children = {c.ip: c for c in load_children(tmp_path / "state")}
    assert children["127.0.0.2"].messages == 4
    assert children["127.0.0.3"].messages == 1
    logs = first.log + second.log
    assert logs.count("new child server 127.0.0.2") == 1
    assert logs.count("new child server 127.0.0.3") == 1


def _announced(directory: Path) -> int:
    return sum(1 for p in directory.iterdir() if p.read_text().endswith("}"))


async def _wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def _wait_sync(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


async def test_dns_fallback_names_the_sender(tmp_path: Path) -> None:
    """rsyslog's FROMHOST: 127.0.0.1 is `localhost` in /etc/hosts; looked up off the hot path."""
    async with running_server(tmp_path, {"hostname.fallback": "dns"}) as srv:
        names: list[str] = []
        for _ in range(50):
            send_udp(srv.port, [b"<13>su: no hostname in this one"])
            await asyncio.sleep(0.05)
            names = [x["hostname"] for x in read_lines(srv.file("127.0.0.1"))]
            if "localhost" in names:
                break
    assert names[-1] == "localhost"
    assert set(names) <= {"127.0.0.1", "localhost"}  # the IP only until the answer came


async def test_one_sender_over_many_connections_and_udp_keeps_its_order(tmp_path: Path) -> None:
    """With workers, the kernel steers a sender's every socket to one worker (by source IP)."""
    async with running_server(tmp_path) as srv:
        sent = []
        for seq in range(60):
            payload = b"<13>Jan  5 10:11:12 h app: seq=%d" % seq
            sent.append(f" seq={seq}")
            if seq % 3 == 0:
                send_udp(srv.port, [payload], source="127.0.0.9")
            else:
                send_tcp(
                    srv.port,
                    lf([payload]) if seq % 3 == 1 else octet([payload]),
                    source="127.0.0.9",
                )
            await asyncio.sleep(0.005)  # sequential, as a sender's messages are
        lines = await wait_for_lines(srv.file("127.0.0.9"), len(sent))
    assert [x["msg"] for x in lines] == sent


def test_listen_auto_binds_the_named_interface(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    config = tmp_path / "auto.toml"
    port = free_port()
    config.write_text(f'[listen]\naddresses = ["auto:{port}"]\ninterface = "lo"\n')
    srv = ServerProcess(tmp_path, "--config", str(config))
    srv.args.remove("--listen")
    srv.args.remove(f"127.0.0.1:{srv.port}")
    srv.port = port
    srv.start()
    try:
        assert f"listen auto: 127.0.0.1:{port} from lo" in srv.log
        send_udp(port, MESSAGES[:1], source="127.0.0.2")
        _wait_sync(lambda: len(read_lines(srv.file("127.0.0.2"))) == 1)
    finally:
        assert srv.stop() == 0


def test_listen_auto_binds_ahead_of_the_bridge_with_flannel_subnet(tmp_path: Path) -> None:
    """flannel's subnet.env names the bridge address before cni0 exists: bind with IP_FREEBIND."""
    flannel = tmp_path / "subnet.env"
    flannel.write_text("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.77.1/24\n")
    args = [sys.executable, "-m", "relay", "serve", "--log-dir", str(tmp_path / "logs"),
            "--state-dir", str(tmp_path / "state"), "--listen", "auto:5599", "--config", str(tmp_path / "c.toml")]  # fmt: skip
    (tmp_path / "c.toml").write_text(
        f'[listen]\ninterface = "cni0-plura-test"\nflannel_subnet_env = "{flannel}"\n'
        '[metrics]\nlisten = ""\n'
    )
    # the named interface does not exist, so only a `cni0` name would use flannel: wait instead
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "waiting for cni0-plura-test" in err
    (tmp_path / "c.toml").write_text(
        f'[listen]\nflannel_subnet_env = "{flannel}"\n[metrics]\nlisten = ""\n'
    )
    if any(Path(f"/sys/class/net/{name}").exists() for name in ("cni0", "docker0", "cbr0")):
        pytest.skip("this host has a real bridge: auto would bind to it")
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "listen auto: 10.244.77.1:5599 from " in err and "bound ahead of the bridge" in err
    assert "listening on udp 10.244.77.1:5599" in err


async def test_origin_stamp_from_a_trusted_relay(tmp_path: Path) -> None:
    overrides = {"origin.trust_origip": True, "origin.trusted_sources": ["127.0.0.50/32"]}
    async with running_server(tmp_path, overrides) as srv:
        send_tcp(
            srv.port,
            lf([b"<13>Jan  5 10:11:12 pod-a app: [origip=10.244.2.5] hi"]),
            source="127.0.0.50",
        )
        [line] = await wait_for_lines(srv.file("10.244.2.5"), 1)
    assert (line["hostname"], line["msg"]) == ("pod-a", " hi")
    children = {c.ip: c for c in load_children(srv.state_dir)}
    assert children["10.244.2.5"].via == "127.0.0.50"
    assert "127.0.0.50" not in children
