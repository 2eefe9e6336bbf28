"""Hostile and heavy conditions: many sources, floods, refused senders, rate limits, rotation
without a signal, a full disk, slow and endless TCP senders."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.children.registry import load_children
from tests.disks import small_tmpfs
from tests.integration.conftest import (
    lf,
    read_lines,
    running_server,
    send_tcp,
    send_udp,
    wait_for_lines,
)

MSG = b"<13>Jan  5 10:11:12 h app: x"


def _stats(srv: Any) -> dict[str, float]:
    stats: dict[str, float] = srv.server.stats()
    return stats


async def _until(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_20000_sources_with_a_cache_of_256_files(tmp_path: Path, workers: int) -> None:
    if workers > 1:
        pytest.skip("one process: the descriptor bound is per process")
    overrides = {
        "output.max_open_files": 256,
        "children.max_children": 30_000,
        "children.new_sources_burst": 30_000,
    }
    sources = [f"127.{1 + i // 62500}.{i // 250 % 250 + 1}.{i % 250 + 2}" for i in range(20_000)]
    async with running_server(tmp_path, overrides) as srv:
        peak = 0
        for start in range(0, len(sources), 1000):
            for source in sources[start : start + 1000]:
                send_udp(
                    srv.port, [b"<13>Jan  5 10:11:12 h app: from " + source.encode()], source=source
                )
            await asyncio.sleep(0.05)
            peak = max(peak, srv.server.sink.open_files)
        await _until(lambda: _stats(srv)["lines_written"] >= len(sources), 30)
        evictions = srv.server.sink.evictions
    assert peak <= 256
    assert evictions >= len(sources) - 256
    for source in sources[::997]:
        [line] = read_lines(srv.file(source))
        assert line["msg"] == f" from {source}"
    assert len(list(srv.log_dir.iterdir())) == len(sources)


async def test_ipv6_sources_from_many_ports_share_one_file(tmp_path: Path) -> None:
    async with running_server(tmp_path, {"listen.addresses": ["[::1]:0"]}) as srv:
        for i in range(50):
            send_udp(srv.port, [MSG + b" %d" % i], source="::1", host="::1")
        lines = await wait_for_lines(srv.file("::1"), 50)
    assert len(lines) == 50


async def test_spoofed_flood_beyond_max_children_goes_to_overflow(tmp_path: Path) -> None:
    overrides = {"children.max_children": 20}
    async with running_server(tmp_path, overrides) as srv:
        for i in range(60):
            send_udp(srv.port, [MSG], source=f"127.0.9.{i + 2}")
        await _until(lambda: _stats(srv)["lines_written"] >= 60)
        await asyncio.sleep(0.5)
        overflow = _stats(srv)["overflow"]
    own = [p for p in srv.log_dir.iterdir() if p.name != "ceelog-overflow.log"]
    assert len(own) == 20
    assert len(read_lines(srv.log_dir / "ceelog-overflow.log")) == 40 == overflow
    assert len(load_children(srv.state_dir)) == 20


async def test_new_sources_per_second_are_capped(tmp_path: Path, workers: int) -> None:
    overrides = {"children.max_new_per_second": 0.5, "children.new_sources_burst": 6}
    async with running_server(tmp_path, overrides) as srv:
        for i in range(30):
            send_udp(srv.port, [MSG], source=f"127.0.8.{i + 2}")
        await _until(lambda: _stats(srv)["lines_written"] >= 30)
    own = [p for p in srv.log_dir.iterdir() if p.name != "ceelog-overflow.log"]
    assert 6 <= len(own) <= 8  # the burst, plus what the rate refilled meanwhile (per worker)


async def test_sources_not_allowed_are_refused_before_any_work(tmp_path: Path) -> None:
    async with running_server(tmp_path, {"listen.allowed_sources": ["127.0.0.2/32"]}) as srv:
        send_udp(srv.port, [MSG], source="127.0.0.3")
        send_udp(srv.port, [MSG], source="127.0.0.2")
        with socket.create_connection(
            ("127.0.0.1", srv.port), source_address=("127.0.0.3", 0)
        ) as s:
            s.sendall(lf([MSG]))
            s.settimeout(5)
            with pytest.raises((ConnectionResetError, BrokenPipeError, socket.timeout)):
                while s.recv(100):  # aborted by the server
                    pass
                raise ConnectionResetError
        await wait_for_lines(srv.file("127.0.0.2"), 1)
        await _until(lambda: _stats(srv).get("tcp_refused_connections", 0) >= 1)
        stats = _stats(srv)
    assert not srv.file("127.0.0.3").exists()
    assert stats["refused"] == 1


async def test_udp_rate_limit_drops_and_counts(tmp_path: Path) -> None:
    overrides = {"listen.rate_limit_per_source": 1.0, "listen.rate_limit_burst": 10}
    async with running_server(tmp_path, overrides) as srv:
        send_udp(srv.port, [MSG] * 50, source="127.0.0.4")
        await _until(lambda: _stats(srv)["rate_limited"] >= 39)
        stats = _stats(srv)
    assert 10 <= len(read_lines(srv.file("127.0.0.4"))) <= 11
    assert stats["rate_limited"] + len(read_lines(srv.file("127.0.0.4"))) == 50


async def test_tcp_rate_limit_pushes_back_without_loss(tmp_path: Path) -> None:
    overrides = {"listen.rate_limit_per_source": 200.0, "listen.rate_limit_burst": 50}
    async with running_server(tmp_path, overrides) as srv:
        started = time.monotonic()
        await asyncio.to_thread(send_tcp, srv.port, lf([MSG] * 400), "127.0.0.5")
        lines = await wait_for_lines(srv.file("127.0.0.5"), 400, timeout_s=15)
        took = time.monotonic() - started
    assert len(lines) == 400
    assert took >= 1.0  # 350 over the burst at 200/s


async def test_rotation_by_rename_delete_and_copytruncate_without_signal(tmp_path: Path) -> None:
    async with running_server(tmp_path, {"output.reopen_check_interval_s": 0.1}) as srv:
        path = srv.file("127.0.0.6")
        send_udp(srv.port, [MSG + b" 1"], source="127.0.0.6")
        await wait_for_lines(path, 1)
        path.rename(path.with_name(path.name + ".1"))  # logrotate's default
        await asyncio.sleep(0.3)
        send_udp(srv.port, [MSG + b" 2"], source="127.0.0.6")
        assert [x["msg"] for x in await wait_for_lines(path, 1)] == [" x 2"]
        path.unlink()  # deleted
        await asyncio.sleep(0.3)
        send_udp(srv.port, [MSG + b" 3"], source="127.0.0.6")
        assert [x["msg"] for x in await wait_for_lines(path, 1)] == [" x 3"]
        shutil.copy(path, path.with_name(path.name + ".2"))  # copytruncate
        with open(path, "r+b") as handle:
            handle.truncate(0)
        send_udp(srv.port, [MSG + b" 4"], source="127.0.0.6")
        await asyncio.sleep(0.3)
        data = path.read_bytes()
    assert [x["msg"] for x in read_lines(path.with_name(path.name + ".1"))] == [" x 1"]
    assert b"\x00" not in data  # O_APPEND: no hole where the old content was
    assert [x["msg"] for x in read_lines(path)] == [" x 4"]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "small", "256k") as mount:
        yield mount


async def test_full_disk_keeps_receiving_and_resumes(tmp_path: Path, small_disk: Path) -> None:
    filler = small_disk / "filler"
    async with running_server(tmp_path, {"output.log_dir": str(small_disk / "logs")}) as srv:
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # fill the disk up
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        for i in range(200):
            send_udp(srv.port, [MSG + b" lost %d" % i], source="127.0.0.7")
        await _until(lambda: _stats(srv)["write_failed"] > 0)
        assert (await asyncio.to_thread(_health, srv))[0] == 503  # not ready: cannot write
        filler.unlink()  # space comes back
        send_udp(srv.port, [MSG + b" after"], source="127.0.0.7")
        lines = await wait_for_lines(small_disk / "logs" / "ceelog-127.0.0.7.log", 1)
        assert lines and lines[-1]["msg"] == " x after"
        assert (await asyncio.to_thread(_health, srv))[0] == 200


def _health(srv: Any) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        url = f"http://127.0.0.1:{srv.server.health.port}/readyz"
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def test_slow_loris_and_endless_frame_stay_bounded(tmp_path: Path) -> None:
    overrides = {"listen.idle_timeout_s": 1.0}
    async with running_server(tmp_path, overrides) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"<13>Jan  5 10:11:12 h app: " + b"y" * 1_000_000)  # never ends
        await writer.drain()
        await _until(lambda: _stats(srv)["tcp_discarded_bytes"] > 900_000)
        stats = _stats(srv)
        assert stats["tcp_buffered_bytes"] <= 8096
        writer.write(b"\n" + MSG + b" next\n")
        await writer.drain()
        lines = await wait_for_lines(srv.file("127.0.0.1"), 2)
        assert [len(x["msg"]) for x in lines] == [8096 - 26, 7]  # no bogus third message
        # a slow-loris: a byte now and then, never a frame; then silence: closed when idle
        writer.write(b"<13")
        await writer.drain()
        try:
            assert await asyncio.wait_for(reader.read(), 5) == b""  # the server closed it
            await _until(lambda: _stats(srv).get("tcp_idle_closed", 0) >= 1)
        finally:
            writer.close()
            await writer.wait_closed()


async def test_max_connections(tmp_path: Path, workers: int) -> None:
    if workers > 1:
        pytest.skip("the limit is per worker process")
    async with running_server(tmp_path, {"listen.max_connections": 3}) as srv:
        conns = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(5)]
        try:
            await _until(lambda: _stats(srv).get("tcp_refused_connections", 0) == 2)
            assert _stats(srv)["tcp_connections"] == 3
        finally:
            for conn in conns:
                conn.close()


def test_inactive_children_are_listed_and_their_files_removed_after_retention(
    tmp_path: Path,
) -> None:
    import json as json_module

    from click.testing import CliRunner

    from relay.cli import main
    from tests.integration.conftest import ServerProcess

    config = tmp_path / "c.toml"
    config.write_text("[children]\ninactive_after_s = 0.5\nretention_s = 1.0\n")
    srv = ServerProcess(tmp_path, "--config", str(config)).start()
    try:
        send_udp(srv.port, [MSG], source="127.0.0.2")
        deadline = time.monotonic() + 10
        while not srv.file("127.0.0.2").exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        args = ["children", "--config", str(config), "--state-dir", str(srv.state_dir)]
        time.sleep(1.2)  # a save has happened; the child has gone quiet
        table = CliRunner().invoke(main, args).output
        assert "inactive" in table.splitlines()[1]
        [child] = json_module.loads(CliRunner().invoke(main, [*args, "--json"]).output)
        assert child["active"] is False
        while srv.file("127.0.0.2").exists():  # retention: removed after 0.5 + 1.0 s
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert "removed" in srv.log and "inactive since" in srv.log
    finally:
        assert srv.stop() == 0
