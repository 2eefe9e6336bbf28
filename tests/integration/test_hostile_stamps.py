"""A trusted relay sends hostile origin stamps and hostnames: no file name, log line or CLI output
may carry their control bytes (issue 11, item 8). Real processes: the server, the relay's frames
over TCP from a trusted address, and `plura-relay children` run as a command."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import ServerProcess, lf, read_lines, send_tcp

RELAY = "127.0.0.1"  # the trusted relay
# raw bytes a terminal would act on: ESC, BEL, DEL, and the C1 CSI as UTF-8
HOSTILE = (b"\x1b", b"\x07", b"\x7f", b"\xc2\x9b")
STAMPS = [
    b"<13>Jan  5 10:11:12 relayhost app: [origip=fe80::1%*?] zone with shell characters",
    b"<13>Jan  5 10:11:12 relayhost app: [origip=fe80::1%eth0] zone with an interface name",
    b'<13>1 2026-01-05T10:11:12Z relayhost app - - [origin ip="fe80::1%\x1b]0;pwned\x07"] '
    b"zone with an OSC title sequence",
    b'<13>1 2026-01-05T10:11:12Z relayhost app - - [origin ip="fe80::2%lo"] zone in SD',
]
# a valid origin whose hostname carries what the parser does not escape (DEL, C1)
HOSTNAME = (
    b'<13>1 2026-01-05T10:11:12Z evil\x7f\xc2\x9b[31m app - - [origin ip="10.9.9.9"] hostname'
)


def _wait(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _relay_cli(*args: str) -> bytes:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args], capture_output=True, check=True, timeout=30
    ).stdout


@pytest.mark.timeout(90)
def test_zone_ids_are_invalid_origins_and_nothing_prints_raw_control_bytes(
    tmp_path: Path, server_process: Callable[..., ServerProcess]
) -> None:
    conf = tmp_path / "b.toml"
    conf.write_text(f'[origin]\ntrust_origip = true\ntrusted_sources = ["{RELAY}/32"]\n')
    server = server_process("--config", str(conf))
    send_tcp(server.port, lf([*STAMPS, HOSTNAME]), source=RELAY)
    _wait(lambda: len(read_lines(server.file(RELAY))) == len(STAMPS))
    _wait(lambda: len(read_lines(server.file("10.9.9.9"))) == 1)
    _wait(lambda: server.metrics().get("plura_relay_origin_invalid_total", 0) == len(STAMPS))
    _wait(lambda: "new child server 10.9.9.9" in server.log)
    # the zone-id stamps were filed under the relay; an `[origip=...]` one stays in msg as text
    names = sorted(path.name for path in server.log_dir.iterdir())
    assert names == ["ceelog-10.9.9.9.log", f"ceelog-{RELAY}.log"]
    msgs = [line["msg"] for line in read_lines(server.file(RELAY))]
    assert sum(msg.startswith(" [origip=fe80::1%") for msg in msgs) == 2
    time.sleep(1.5)  # the registry is saved every second
    table = _relay_cli("children", "--state-dir", str(server.state_dir))
    listed = _relay_cli("children", "--json", "--state-dir", str(server.state_dir))
    assert server.stop() == 0
    log = server.stderr_path.read_bytes()
    for output in (log, table, listed):
        assert not any(raw in output for raw in HOSTILE), output
    [announced] = [line for line in log.splitlines() if b"new child server 10.9.9.9" in line]
    assert b"evil\\x7f\\x9b[31m" in announced
    assert b"evil\\x7f\\x9b[31m" in table
    hostnames = {child["ip"]: child["hostname"] for child in json.loads(listed)}
    assert hostnames["10.9.9.9"] == "evil\x7f\x9b[31m"  # the same data, escaped as JSON
    assert set(hostnames) == {RELAY, "10.9.9.9"}
