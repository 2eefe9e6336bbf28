"""`--workers 2`, one worker SIGKILLed under a steady UDP stream: real processes throughout.

The dead worker's sockets stay open in the supervisor, so without steering its senders'
datagrams would queue there, unread, and overflow; and a worker used to come back after 1.5 s.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

from tests.integration.conftest import ServerProcess

RATE = 5000  # datagrams a second, over all sources
SECONDS = 3.0
SOURCES = [f"127.0.0.{n}" for n in range(10, 18)]  # steering splits them 4 / 4 (odd / even)


def _send(port: int, sent: dict[str, int], stop_at: float) -> None:
    socks = []
    for source in SOURCES:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((source, 0))
        socks.append((source, sock))
    seq = 0
    tick = time.monotonic()
    while tick < stop_at:
        for _ in range(RATE // 100):  # every 10 ms
            source, sock = socks[seq % len(socks)]
            sock.sendto(b"<13>Jan  5 10:11:12 h app: seq %d" % seq, ("127.0.0.1", port))
            sent[source] += 1
            seq += 1
        tick += 0.01
        time.sleep(max(0.0, tick - time.monotonic()))
    for _, sock in socks:
        sock.close()


def _worker_pid(server_pid: int, index: int) -> int:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if (
            ppid == server_pid
            and b"worker" in argv
            and argv[argv.index(b"--index") + 1] == b"%d" % index
        ):
            return int(entry.name)
    raise AssertionError(f"no worker {index} under {server_pid}")


def _received(log_dir: Path) -> dict[str, set[int]]:
    got: dict[str, set[int]] = {}
    for source in SOURCES:
        path = log_dir / f"ceelog-{source}.log"
        data = path.read_bytes() if path.exists() else b""
        got[source] = {int(n) for n in re.findall(rb"seq (\d+)", data)}
    return got


@pytest.mark.timeout(60)
def test_sigkilled_worker_costs_no_datagrams_and_is_back_within_300ms(
    tmp_path: Path, workers: int
) -> None:
    if workers != 2:
        pytest.skip("a worker crash needs workers")
    config = tmp_path / "relay.toml"
    # a small receive buffer: a socket nobody reads overflows within a fraction of a second
    config.write_text("[listen]\nrcvbuf_bytes = 262144\n")
    server = ServerProcess(tmp_path, "--config", str(config)).start()
    try:
        assert server.proc is not None
        victim = _worker_pid(server.proc.pid, 0)
        sent: dict[str, int] = defaultdict(int)
        start = time.monotonic()
        sender = threading.Thread(target=_send, args=(server.port, sent, start + SECONDS))
        sender.start()
        time.sleep(1.0)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        while "worker 0 serving again" not in server.log and time.monotonic() < killed + 10:
            time.sleep(0.005)
        seen_back_s = time.monotonic() - killed
        sender.join()
        total = sum(sent.values())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            got = _received(server.log_dir)
            if sum(map(len, got.values())) >= total:
                break
            time.sleep(0.1)
        lost = total - sum(map(len, got.values()))
        by_source = {source: sent[source] - len(got[source]) for source in SOURCES}
        back = re.search(r"worker 0 serving again after ([0-9.]+)s", server.log)
        print(f"sent {total}, lost {lost}, worker back after {back and back.group(1)}s "
              f"(seen by the test after {seen_back_s:.3f}s), lost per source {by_source}")  # fmt: skip
        # what the killed worker had read and not yet written (flush_interval_s of its share:
        # 20 ms, ~50 datagrams; more when a loaded machine delays its loop) is all a crash may
        # cost: measured 0 to 194. Before the standby and the steering: 2,445 of 15,000 lost
        assert lost <= 300, f"{lost} of {total} datagrams lost: {by_source}"
        assert back is not None, server.log
        assert float(back.group(1)) < 0.3
        assert seen_back_s < 1.0
    finally:
        server.stop()
