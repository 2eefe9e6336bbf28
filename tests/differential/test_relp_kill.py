"""Zero loss across SIGKILL with RELP (issue 15): a real rsyslogd with omrelp sends 100,000
numbered messages to a real plura-relay process that is SIGKILLed twice and restarted on the
same port and log directory. Every number must be in the ceelog file; the duplicates (omrelp
resends its unacknowledged window after each kill) are counted and printed. The same over TLS.
The same schedule with plain TCP (omfwd) prints how many were lost, for comparison: nothing is
asserted about that loss, it is the reason RELP exists.

The test feeds rsyslogd over a local imtcp input (rsyslogd is never killed), and rsyslogd's
action queue holds what plura-relay has not acknowledged while it is away.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trustme

from tests.integration.conftest import ServerProcess, free_port
from tests.rsyslogd import tcp_port_accepts

TOTAL = 100_000
KILLS_AT = (0.3, 0.6)  # fractions of the messages fed when plura-relay is SIGKILLed
DEADLINE_S = 240.0
FEED_CHUNK = 1000
STALL_S = 15.0  # plain TCP: nothing new for this long, and what is missing is lost
SEQ = re.compile(rb'seq=(\d+)"')
OMRELP = Path("/usr/lib/x86_64-linux-gnu/rsyslog/omrelp.so")


class Pki:
    """A CA, the server's certificate for 127.0.0.1 / localhost and a client certificate:
    librelp's GnuTLS client without a certificate of its own offers only anonymous ciphers
    (seen with rsyslog 8.2302 and librelp 1.11), which plura-relay's TLS refuses."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        self.ca_file = directory / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        for name, names in (("server", ("127.0.0.1", "localhost")), ("client", ("pod01",))):
            issued = ca.issue_cert(*names)
            issued.cert_chain_pems[0].write_to_path(str(directory / f"{name}.pem"))
            issued.private_key_pem.write_to_path(str(directory / f"{name}.key"))
        self.cert_file, self.key_file = directory / "server.pem", directory / "server.key"
        self.client_cert, self.client_key = directory / "client.pem", directory / "client.key"


def need_omrelp() -> None:
    if not OMRELP.exists():
        message = "rsyslog's omrelp not installed: apt-get install rsyslog-relp"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


def relay_config(tmp_path: Path, port: int, transport: str, pki: Pki | None) -> Path:
    lines = ["[listen]", "max_connections_per_source = 1000"]
    if transport == "relp":
        lines += ["[listen.relp]", f'addresses = ["127.0.0.1:{port}"]']
    elif transport == "relp-tls":
        assert pki is not None
        lines += [
            "[listen.relp]", f'tls_addresses = ["127.0.0.1:{port}"]',
            "[listen.tls]", f'cert_file = "{pki.cert_file}"', f'key_file = "{pki.key_file}"',
        ]  # fmt: skip
    path = tmp_path / "relay.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def rsyslog_config(
    run_dir: Path, feed_port: int, port: int, transport: str, pki: Pki | None
) -> Path:
    queue = ('queue.type="LinkedList" queue.size="200000" queue.dequeueBatchSize="128"'
             ' action.resumeRetryCount="-1" action.resumeInterval="1"')  # fmt: skip
    if transport == "tcp":
        action = f'type="omfwd" target="127.0.0.1" port="{port}" protocol="tcp"'
    else:
        action = f'type="omrelp" target="127.0.0.1" port="{port}"'
        if transport == "relp-tls":
            assert pki is not None
            action += (f' tls="on" tls.caCert="{pki.ca_file}" tls.authMode="name"'
                       f' tls.permittedPeer=["localhost"] tls.myCert="{pki.client_cert}"'
                       f' tls.myPrivKey="{pki.client_key}"')  # fmt: skip
    conf = run_dir / "rsyslog.conf"
    conf.write_text(
        f"""
global(workDirectory="{run_dir / "work"}")
module(load="imtcp")
module(load="{"omrelp" if transport != "tcp" else "builtin:omfwd"}")
input(type="imtcp" address="127.0.0.1" port="{feed_port}")
action({action} {queue})
""".replace('module(load="builtin:omfwd")\n', "")
    )
    return conf


@contextmanager
def rsyslogd(binary: str, run_dir: Path, conf: Path, feed_port: int) -> Iterator[Path]:
    (run_dir / "work").mkdir(parents=True, exist_ok=True)
    output = run_dir / "rsyslogd.out"
    with output.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "-n", "-f", str(conf), "-i", str(run_dir / "rsyslogd.pid")],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while not tcp_port_accepts(feed_port):
            assert proc.poll() is None and time.monotonic() < deadline, output.read_text()
            time.sleep(0.05)
        yield output
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def numbers_in(path: Path) -> collections.Counter[int]:
    if not path.exists():
        return collections.Counter()
    data = path.read_bytes()
    return collections.Counter(int(n) for n in SEQ.findall(data[: data.rfind(b"\n") + 1]))


def feed(feed_port: int) -> None:
    """All the numbered messages into rsyslogd at once: its action queue holds them."""
    with socket.create_connection(("127.0.0.1", feed_port), timeout=60) as sock:
        for start in range(0, TOTAL, FEED_CHUNK):
            sock.sendall(b"".join(
                b"<13>Jan  5 10:11:12 pod01 app: seq=%d\n" % n
                for n in range(start, min(start + FEED_CHUNK, TOTAL))
            ))  # fmt: skip


def kill_while_receiving(server: ServerProcess, path: Path, deadline: float) -> int:
    """SIGKILL plura-relay (and restart it at once) when its file holds the KILLS_AT shares of
    the messages, i.e. in the middle of the stream. Returns how many kills happened."""
    kills = 0
    line_bytes = 0.0
    for share in KILLS_AT:
        last_size, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            size = path.stat().st_size if path.exists() else 0
            if not line_bytes and size > 100_000:
                data = path.read_bytes()
                line_bytes = len(data) / max(data.count(b"\n"), 1)
            if line_bytes and size >= share * TOTAL * line_bytes:
                break
            if size != last_size:
                last_size, last_change = size, time.monotonic()
            elif time.monotonic() - last_change > STALL_S:
                break  # nothing arrives any more (plain TCP after a kill): kill on schedule
            time.sleep(0.005)
        server.stop(signal.SIGKILL)
        kills += 1
        server.start()
    return kills


def run_schedule(
    tmp_path: Path, binary: str, transport: str, pki: Pki | None = None
) -> tuple[collections.Counter[int], int, Path]:
    port, feed_port = free_port(), free_port()
    config = relay_config(tmp_path, port, transport, pki)
    server = ServerProcess(tmp_path, "--config", str(config))
    if transport == "tcp":
        server.port = port  # the plain TCP port is the one omfwd sends to
        server.args[server.args.index("--listen") + 1] = f"127.0.0.1:{port}"
    conf = rsyslog_config(tmp_path, feed_port, port, transport, pki)
    server.start()
    try:
        with rsyslogd(binary, tmp_path, conf, feed_port) as output:
            feeder = threading.Thread(target=feed, args=(feed_port,))
            feeder.start()
            path = server.file("127.0.0.1")
            deadline = time.monotonic() + DEADLINE_S
            kills = kill_while_receiving(server, path, deadline)
            feeder.join(DEADLINE_S)
            seen = numbers_in(path)
            quiet_since = time.monotonic()
            while len(seen) < TOTAL and time.monotonic() < deadline:
                time.sleep(0.5)
                now = numbers_in(path)
                if now != seen:
                    seen, quiet_since = now, time.monotonic()
                elif transport == "tcp" and time.monotonic() - quiet_since > STALL_S:
                    break  # what TCP lost does not come back
            assert kills == len(KILLS_AT)
            return seen, kills, output
    finally:
        server.stop()


def report(transport: str, seen: collections.Counter[int]) -> tuple[int, int]:
    missing = TOTAL - len(seen)
    duplicates = sum(seen.values()) - len(seen)
    print(f"\n{transport}: {TOTAL} sent, {len(seen)} distinct received, {missing} lost, "
          f"{duplicates} duplicates, plura-relay SIGKILLed {len(KILLS_AT)} times")  # fmt: skip
    return missing, duplicates


@pytest.mark.timeout(420)
@pytest.mark.parametrize("transport", ["relp", "relp-tls"])
def test_relp_loses_nothing_across_two_sigkills(
    tmp_path: Path,
    rsyslogd_binary: str,
    transport: str,
    record_property: pytest.RecordProperty,
) -> None:
    need_omrelp()
    pki = Pki(tmp_path / "pki") if transport == "relp-tls" else None
    seen, _, output = run_schedule(tmp_path, rsyslogd_binary, transport, pki)
    missing, duplicates = report(transport, seen)
    record_property("duplicates", duplicates)
    lost = sorted(set(range(TOTAL)) - set(seen))[:20]
    assert not missing, f"lost {missing}, e.g. {lost}; rsyslogd said:\n{output.read_text()[-3000:]}"
    assert set(seen) == set(range(TOTAL))


@pytest.mark.timeout(420)
def test_plain_tcp_in_the_same_schedule_for_comparison(
    tmp_path: Path, rsyslogd_binary: str, record_property: pytest.RecordProperty
) -> None:
    seen, kills, _ = run_schedule(tmp_path, rsyslogd_binary, "tcp")
    missing, duplicates = report("tcp (omfwd)", seen)
    record_property("lost", missing)
    record_property("duplicates", duplicates)
    assert kills == len(KILLS_AT)  # nothing asserted on the loss: it is the comparison
