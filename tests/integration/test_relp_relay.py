"""plura-relay A forwarding over RELP to plura-relay B's RELP listener (`listen.relp`), with B
SIGKILLed once while messages are in flight and A SIGKILLed once with a backlog in its spool:
every number arrives at B at least once (the duplicates are counted and printed)."""

from __future__ import annotations

import importlib.util
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import (
    WORKERS,
    ServerProcess,
    free_port,
    octet,
    running_server,
    send_tcp,
    wait_for_lines,
)
from tests.integration.test_forward_tls import Pki
from tests.rsyslogd import tcp_port_accepts

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("relay.ingest.relp_listener") is None,
        reason="relay.ingest.relp_listener (the RELP listener, branch relp-in) is not there yet",
    ),
]

TOTAL = 100_000
SENDER = "127.0.0.2"
CHUNK = 2_000
SEQ = re.compile(rb"seq=(\d{6})")


@pytest.fixture(autouse=True)
def workers() -> Iterator[int]:
    """One process each (overrides the integration default of running with workers too)."""
    WORKERS[0] = 1
    yield 1


def _message(seq: int) -> bytes:
    return b"<13>Jan  5 10:11:12 pod-a app[7]: seq=%06d payload %s" % (seq, b"x" * 60)


def _feed(port: int, first: int, last: int, pause_s: float) -> None:
    with socket.socket() as sock:
        sock.bind((SENDER, 0))
        sock.connect(("127.0.0.1", port))
        for start in range(first, last, CHUNK):
            stop = min(start + CHUNK, last)
            batch = map(_message, range(start, stop))
            sock.sendall(b"".join(b"%d %s" % (len(m), m) for m in batch))
            time.sleep(pause_s)


def _seqs(path: Path) -> list[int]:
    return [int(n) for n in SEQ.findall(path.read_bytes())] if path.exists() else []


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _wait(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Collector:
    """plura-relay B with a RELP listener on `relp_port`, trusting A's origip stamps."""

    def __init__(self, tmp_path: Path) -> None:
        self.relp_port = free_port()
        conf = tmp_path / "b.toml"
        conf.write_text(
            f'[listen.relp]\naddresses = ["127.0.0.1:{self.relp_port}"]\n'
            '[origin]\ntrust_origip = true\ntrusted_sources = ["127.0.0.1/32"]\n'
        )
        (tmp_path / "b").mkdir()
        self.process = ServerProcess(tmp_path / "b", "--config", str(conf))

    def start(self) -> None:
        self.process.start()
        _wait(lambda: tcp_port_accepts(self.relp_port, "127.0.0.1"), 15, "B's RELP listener")


@pytest.mark.timeout(300)
def test_relp_between_two_relays_both_killed_loses_nothing(tmp_path: Path) -> None:
    b = Collector(tmp_path)
    b.start()
    a_conf = tmp_path / "a.toml"
    a_conf.write_text(
        "[[forward]]\n"
        f'name = "collector"\nhost = "127.0.0.1"\nport = {b.relp_port}\nprotocol = "relp"\n'
        "reconnect_initial_s = 0.1\nreconnect_max_s = 0.5\nrelp_ack_timeout_s = 5\n"
        "segment_bytes = 1048576\n"
    )
    (tmp_path / "a").mkdir()
    a = ServerProcess(tmp_path / "a", "--config", str(a_conf)).start()
    a_file, b_file = a.file(SENDER), b.process.file(SENDER)
    try:
        # phase 1: B killed while messages are in flight, restarted on its port
        feeding = threading.Thread(target=_feed, args=(a.port, 0, 60_000, 0.03))
        feeding.start()
        _wait(lambda: len(_seqs(b_file)) >= 20_000, 60, "20k at B")
        b.process.stop(signal.SIGKILL)
        time.sleep(0.3)
        b.start()
        feeding.join()
        # A has read (and so spooled) all of phase 1; killed with what it has not yet
        # delivered in its spool, and restarted
        _wait(lambda: _lines(a_file) >= 60_000, 60, "A to have read 60k")
        a.stop(signal.SIGKILL)
        a.start()
        # phase 2: the rest
        _feed(a.port, 60_000, TOTAL, 0.03)
        _wait(lambda: len(set(_seqs(b_file))) >= TOTAL, 120, "every number at B")
    finally:
        for process in (a, b.process):
            if process.proc is not None and process.proc.poll() is None:
                process.stop(signal.SIGTERM)
    seqs = _seqs(b_file)
    unique = set(seqs)
    missing = TOTAL - len(unique & set(range(TOTAL)))
    print(
        f"\nrelp relay -> relay: sent {TOTAL}, A wrote {_lines(a_file)} lines, B received "
        f"{len(seqs)} ({len(unique)} distinct, {len(seqs) - len(unique)} duplicates), "
        f"missing {missing}"
    )
    assert missing == 0
    assert not b.process.file("127.0.0.1").exists()  # every message carried its origin


@pytest.mark.timeout(60)
async def test_relp_tls_between_two_relays_checks_the_certificate(tmp_path: Path) -> None:
    """A -> B over `relp-tls`: B's RELP-over-TLS listener with the `[listen.tls]` certificate,
    A checking it against the CA; every message arrives once (no failure, no resend)."""
    pki = Pki(tmp_path / "pki")
    collector = {
        "listen.relp": {"tls_addresses": ["127.0.0.1:0"]},
        "listen.tls": {"cert_file": str(pki.cert_file), "key_file": str(pki.key_file)},
        "origin.trust_origip": True,
        "origin.trusted_sources": ["127.0.0.1"],
    }
    async with running_server(tmp_path / "b", collector) as b:
        [port] = [p for kind, _, p in b.server.bound if kind == "relp-tls"]
        forward = {"name": "up", "host": "127.0.0.1", "port": port, "protocol": "relp-tls",
                   "tls": {"ca_file": str(pki.ca_file)}, "reconnect_initial_s": 0.1}  # fmt: skip
        async with running_server(tmp_path / "a", {"forward": [forward]}) as a:
            messages = [_message(n) for n in range(500)]
            send_tcp(a.port, octet(messages), source=SENDER)
            lines = await wait_for_lines(b.file(SENDER), 500)
    assert sorted(int(SEQ.findall(line["msg"].encode())[0]) for line in lines) == list(range(500))
