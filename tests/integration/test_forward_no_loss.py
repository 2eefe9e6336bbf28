"""At least once, with real processes: 100k numbered messages through relay A to collector B
while B is stopped, started, SIGKILLed and started again, and A is SIGKILLed and restarted."""

from __future__ import annotations

import re
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.integration.conftest import ServerProcess

TOTAL = 100_000
SENDER = "127.0.0.2"
CHUNK = 2_000
SEQ = re.compile(rb"seq=(\d{6})")

pytestmark = pytest.mark.slow


def _message(seq: int) -> bytes:
    return b"<13>Jan  5 10:11:12 pod-a app[7]: seq=%06d payload %s" % (seq, b"x" * 60)


class Sender:
    """Numbered messages over one TCP connection, CHUNK at a time every `pause_s`."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.bind((SENDER, 0))
        self.sock.connect(("127.0.0.1", port))

    def send(self, first: int, last: int, pause_s: float) -> None:
        for start in range(first, last, CHUNK):
            stop = min(start + CHUNK, last)
            self.sock.sendall(
                b"".join(b"%d %s" % (len(m), m) for m in map(_message, range(start, stop)))
            )
            time.sleep(pause_s)

    def close(self) -> None:
        self.sock.close()


def _seqs(path: Path) -> list[int]:
    return [int(n) for n in SEQ.findall(path.read_bytes())] if path.exists() else []


def _wait(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _line_count(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_every_message_arrives_at_least_once(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    b_conf = tmp_path / "b.toml"
    b_conf.write_text('[origin]\ntrust_origip = true\ntrusted_sources = ["127.0.0.1/32"]\n')
    b = ServerProcess(tmp_path / "b", "--config", str(b_conf)).start()
    a_conf = tmp_path / "a.toml"
    a_conf.write_text(
        "[[forward]]\n"
        f'name = "collector"\nhost = "127.0.0.1"\nport = {b.port}\n'
        "confirm_after_s = 0.5\nreconnect_initial_s = 0.1\nreconnect_max_s = 0.5\n"
        "segment_bytes = 1048576\n"
    )
    a = ServerProcess(tmp_path / "a", "--config", str(a_conf)).start()
    a_file, b_file = a.file(SENDER), b.file(SENDER)
    try:
        # phase 1: 60k messages while B is stopped, started, SIGKILLed and started again
        sender = Sender(a.port)
        feeding = threading.Thread(target=sender.send, args=(0, 60_000, 0.05))
        feeding.start()
        time.sleep(0.3)
        b.stop(signal.SIGTERM)
        time.sleep(0.4)
        b.start()
        time.sleep(0.4)
        b.stop(signal.SIGKILL)
        time.sleep(0.3)
        b.start()
        feeding.join()
        sender.close()
        # A has handled (and so spooled) everything sent so far; then B goes away and A is
        # SIGKILLed with a backlog in its spool
        _wait(lambda: _line_count(a_file) >= 60_000, 30, "A to receive 60k")
        b.stop(signal.SIGKILL)
        time.sleep(0.2)
        a.stop(signal.SIGKILL)
        a.start()
        b.start()
        # phase 2: the rest, with one more SIGKILL of B on the way
        sender = Sender(a.port)
        feeding = threading.Thread(target=sender.send, args=(60_000, TOTAL, 0.05))
        feeding.start()
        time.sleep(0.5)
        b.stop(signal.SIGKILL)
        time.sleep(0.3)
        b.start()
        feeding.join()
        sender.close()
        _wait(lambda: len(set(_seqs(b_file))) >= TOTAL, 90, "B to have every sequence number")
    finally:
        for process in (a, b):
            if process.proc is not None and process.proc.poll() is None:
                process.stop(signal.SIGTERM)
    seqs = _seqs(b_file)
    unique = set(seqs)
    missing = TOTAL - len(unique & set(range(TOTAL)))
    print(
        f"\nno-loss: sent {TOTAL}, A wrote {_line_count(a_file)} lines, B received {len(seqs)} "
        f"({len(unique)} distinct, {len(seqs) - len(unique)} duplicates), missing {missing}"
    )
    assert missing == 0
    assert not b.file("127.0.0.1").exists()  # every message carried its origin
