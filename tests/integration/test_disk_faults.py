"""The log dir misbehaving under a running server process (issue 11, items 1 and 11): a disk that
fills in the middle of a burst, and a log dir deleted while files are open. Real processes: the
server (one process, or two workers appending to one file) and a tmpfs mounted for the test."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.disks import small_tmpfs as mount_tmpfs
from tests.integration.conftest import ServerProcess, lf, read_lines, send_udp

SOURCE = "127.0.0.1"
PAD = b"p" * 200  # ~440-byte lines: a flush of a burst is many pages, so the disk cuts it short


def _wait(predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _total(metrics: dict[str, float], name: str) -> float:
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


def _counts(server: ServerProcess) -> tuple[float, float, float]:
    """(received, lines written, dropped for write errors) as the server's /metrics says."""
    metrics = server.metrics()
    return (
        _total(metrics, "plura_relay_messages_received_total"),
        metrics.get("plura_relay_lines_written_total", 0.0),
        metrics.get('plura_relay_dropped_total{reason="write_error"}', 0.0),
    )


def _settled(server: ServerProcess, received: int) -> Callable[[], bool]:
    def done() -> bool:
        got, written, dropped = _counts(server)
        return got == received and written + dropped == received

    return done


def _burst(port: int, tag: str, connections: int, per_connection: int) -> int:
    """`connections` TCP connections at once from SOURCE (with two workers, both get some and
    append to the same file), each sending numbered messages; returns how many were sent."""
    socks = []
    for _ in range(connections):
        sock = socket.create_connection(("127.0.0.1", port))
        socks.append(sock)
    for c, sock in enumerate(socks):
        frames = [
            b"<13>Jan  5 10:11:12 h app: %s-%d-%d %s" % (tag.encode(), c, i, PAD)
            for i in range(per_connection)
        ]
        sock.sendall(lf(frames))
    for sock in socks:
        sock.close()
    return connections * per_connection


def _fill(path: Path, leave_bytes: int) -> None:
    """Fill the file system of `path` up, then give back `leave_bytes`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 65536):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    os.truncate(path, max(0, path.stat().st_size - leave_bytes))


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    with mount_tmpfs(tmp_path / "tmpfs", "512k") as mount:
        yield mount


@pytest.mark.timeout(120)
def test_full_disk_mid_burst_leaves_only_whole_lines_and_exact_counters(
    tmp_path: Path, small_tmpfs: Path, server_process: Callable[..., ServerProcess]
) -> None:
    log_dir = small_tmpfs / "logs"
    server = server_process("--log-dir", str(log_dir))
    filler = small_tmpfs / "filler"
    _fill(filler, leave_bytes=96 * 1024)
    sent = _burst(server.port, "burst", connections=4, per_connection=400)  # ~700 KB
    _wait(_settled(server, sent))
    assert _counts(server)[2] > 0, "the disk never filled: the test proves nothing"
    filler.unlink()  # space comes back
    sent += _burst(server.port, "after", connections=4, per_connection=50)  # ~90 KB: fits
    _wait(_settled(server, sent))
    _, written, dropped = _counts(server)
    assert server.stop() == 0
    data = (log_dir / f"ceelog-{SOURCE}.log").read_bytes()
    assert data.endswith(b"\n")
    lines = data.split(b"\n")[:-1]
    ids = [json.loads(line)["ceelog"]["msg"].split()[0] for line in lines]  # every line parses
    assert len(set(ids)) == len(ids)
    assert written == len(lines)
    assert dropped == sent - len(lines)
    assert sum(i.startswith("after-") for i in ids) == 200  # all written once space returned


@pytest.mark.timeout(60)
def test_deleted_log_dir_is_recreated_before_the_next_write(
    tmp_path: Path, server_process: Callable[..., ServerProcess]
) -> None:
    conf = tmp_path / "slow-reopen.toml"
    conf.write_text("[output]\nreopen_check_interval_s = 300\n")  # only the write-time check acts
    server = server_process("--config", str(conf))
    path = server.file("127.0.0.8")
    send_udp(server.port, [b"<13>Jan  5 10:11:12 h app: before"], source="127.0.0.8")
    _wait(lambda: len(read_lines(path)) == 1)
    shutil.rmtree(server.log_dir)  # an operator cleaning up
    send_udp(server.port, [b"<13>Jan  5 10:11:12 h app: after"], source="127.0.0.8")
    _wait(lambda: len(read_lines(path)) == 1, timeout_s=5)
    assert [line["msg"] for line in read_lines(path)] == [" after"]
    _wait(lambda: server.metrics().get("plura_relay_lines_written_total") == 2)
    assert server.stop() == 0
