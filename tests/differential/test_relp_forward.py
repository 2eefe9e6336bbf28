"""plura-relay forwarding over RELP (`protocol = "relp"`) to a real rsyslogd with imrelp, the
collector SIGKILLed twice and restarted on the same port: every number arrives at least once.

rsyslogd is the reference collector: imrelp answers a message once it has been submitted, so
its main queue is `Direct` here (the file is written before the answer): a killed collector
then loses nothing it answered, and whatever is missing would be the sender's fault. The
duplicates (RELP resends what was not answered, and what was answered but not yet committed in
the spool) are counted and printed.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.integration.conftest import WORKERS, ServerProcess
from tests.rsyslogd import LISTEN_HOST, free_port, stop_process, tcp_port_accepts

pytestmark = [pytest.mark.differential, pytest.mark.slow]

TOTAL = 100_000
SENDER = "127.0.0.2"
CHUNK = 2_000
SEQ = re.compile(rb"seq=(\d{6})")


def _message(seq: int) -> bytes:
    return b"<13>Jan  5 10:11:12 pod-a app[7]: seq=%06d payload %s" % (seq, b"x" * 60)


def imrelp_conf(port: int, out: Path, work_dir: Path, tls: dict[str, str] | None = None) -> str:
    tls_keys = ""
    if tls:
        # imrelp with a certificate asks the client for one: `certvalid` checks it against
        # the CA (no name rule)
        tls_keys = (
            ' tls="on" tls.cacert="{ca}" tls.mycert="{cert}" tls.myprivkey="{key}"'
            ' tls.authmode="certvalid"'
        ).format(**tls)
    return (
        f'global(workDirectory="{work_dir}")\n'
        'main_queue(queue.type="Direct")\n'
        'module(load="imrelp")\n'
        f'input(type="imrelp" port="{port}" address="{LISTEN_HOST}"{tls_keys})\n'
        'template(name="msgonly" type="string" string="%msg%\\n")\n'
        f'action(type="omfile" file="{out}" template="msgonly")\n'
    )


class RelpCollector:
    """rsyslogd with imrelp on `port`, writing each message's msg to `out`; restartable."""

    def __init__(self, binary: str, run_dir: Path, port: int) -> None:
        self.binary, self.run_dir, self.port = binary, run_dir, port
        self.out = run_dir / "messages.log"
        self.proc: subprocess.Popen[bytes] | None = None
        (run_dir / "work").mkdir(parents=True, exist_ok=True)
        self.conf = run_dir / "rsyslog.conf"
        self.conf.write_text(imrelp_conf(port, self.out, run_dir / "work"))

    def start(self) -> None:
        with (self.run_dir / "rsyslogd.out").open("ab") as output:
            self.proc = subprocess.Popen(
                [self.binary, "-n", "-f", str(self.conf), "-i", str(self.run_dir / "pid")],
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 15
        while not tcp_port_accepts(self.port, LISTEN_HOST):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((self.run_dir / "rsyslogd.out").read_text())
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def seqs(self) -> list[int]:
        return [int(n) for n in SEQ.findall(self.out.read_bytes())] if self.out.exists() else []


def send_numbered(port: int, first: int, last: int, pause_s: float) -> None:
    """Numbered messages over one TCP connection to plura-relay, CHUNK at a time."""
    with socket.socket() as sock:
        sock.bind((SENDER, 0))
        sock.connect((LISTEN_HOST, port))
        for start in range(first, last, CHUNK):
            stop = min(start + CHUNK, last)
            sock.sendall(
                b"".join(b"%d %s" % (len(m), m) for m in map(_message, range(start, stop)))
            )
            time.sleep(pause_s)


def _wait(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def relp_forward_conf(path: Path, port: int, protocol: str = "relp", extra: str = "") -> Path:
    path.write_text(
        "[[forward]]\n"
        f'name = "collector"\nhost = "127.0.0.1"\nport = {port}\nprotocol = "{protocol}"\n'
        "reconnect_initial_s = 0.1\nreconnect_max_s = 0.5\nrelp_ack_timeout_s = 5\n"
        "segment_bytes = 1048576\n" + extra
    )
    return path


def report(name: str, seqs: list[int]) -> int:
    unique = set(seqs)
    missing = TOTAL - len(unique & set(range(TOTAL)))
    print(
        f"\n{name}: sent {TOTAL}, collector received {len(seqs)} ({len(unique)} distinct, "
        f"{len(seqs) - len(unique)} duplicates), missing {missing}"
    )
    return missing


@pytest.fixture
def relay_workers(request: pytest.FixtureRequest) -> Iterator[int]:
    """plura-relay with one process, or with two workers (each its own spool and session)."""
    WORKERS[0] = getattr(request, "param", 1)
    yield WORKERS[0]
    WORKERS[0] = 1


@pytest.mark.timeout(300)
@pytest.mark.parametrize("relay_workers", [1, 2], indirect=True, ids=["workers1", "workers2"])
def test_relp_to_rsyslogd_killed_twice_loses_nothing(
    tmp_path: Path, rsyslogd_binary: str, relay_workers: int
) -> None:
    collector = RelpCollector(rsyslogd_binary, tmp_path / "collector", free_port())
    collector.start()
    (tmp_path / "relay").mkdir()
    conf = relp_forward_conf(tmp_path / "relay.toml", collector.port)
    relay = ServerProcess(tmp_path / "relay", "--config", str(conf)).start()
    try:
        feeding = threading.Thread(target=send_numbered, args=(relay.port, 0, TOTAL, 0.03))
        feeding.start()
        for at in (25_000, 60_000):  # killed while messages are in flight, restarted on the port
            _wait(lambda at=at: len(collector.seqs()) >= at, 60, f"{at} at the collector")
            collector.kill()
            time.sleep(0.3)
            collector.start()
        feeding.join()
        _wait(lambda: len(set(collector.seqs())) >= TOTAL, 150, "every number at the collector")
        # the answers reach the relay after the lines are written (and, with workers, the
        # supervisor's sum is as of their last report)
        acked_key = 'plura_relay_forward_relp_acked_total{target="collector"}'
        _wait(lambda: relay.metrics()[acked_key] >= TOTAL, 10, "the relay to count the answers")
        metrics = relay.metrics()
    finally:
        relay.stop(signal.SIGTERM)
        collector.stop()
    missing = report(f"relp -> rsyslogd (workers {relay_workers})", collector.seqs())
    assert missing == 0
    acked = metrics[acked_key]
    resent = metrics['plura_relay_forward_relp_resent_total{target="collector"}']
    lost = metrics['plura_relay_forward_disconnects_total{target="collector"}']
    print(f"relay: acked {acked:.0f}, resent {resent:.0f}, sessions lost {lost:.0f}")
    assert acked >= TOTAL
    assert lost >= 2
    assert "RELP session with 127.0.0.1" in relay.log  # the kills were seen, and survived


TLS_TOTAL = 20_000


@pytest.mark.timeout(300)
def test_relp_tls_to_rsyslogd_killed_once_loses_nothing(
    tmp_path: Path, rsyslogd_binary: str
) -> None:
    """`relp-tls` to imrelp with `tls="on"`: the collector's certificate is checked against the
    CA (`[forward.tls] ca_file`), and a kill in mid-stream costs nothing."""
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = trustme.CA()
    files = {"ca": pki / "ca.pem", "cert": pki / "cert.pem", "key": pki / "key.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    cert.private_key_pem.write_to_path(str(files["key"]))
    client = ca.issue_cert("relay-a.example")
    client.cert_chain_pems[0].write_to_path(str(pki / "client.pem"))
    client.private_key_pem.write_to_path(str(pki / "client.key"))
    collector = RelpCollector(rsyslogd_binary, tmp_path / "collector", free_port())
    collector.conf.write_text(
        imrelp_conf(
            collector.port, collector.out, tmp_path / "collector" / "work",
            {name: str(path) for name, path in files.items()},
        )
    )  # fmt: skip
    collector.start()
    (tmp_path / "relay").mkdir()
    conf = relp_forward_conf(
        tmp_path / "relay.toml", collector.port, "relp-tls",
        f'[forward.tls]\nca_file = "{files["ca"]}"\n'
        f'cert_file = "{pki / "client.pem"}"\nkey_file = "{pki / "client.key"}"\n',
    )  # fmt: skip
    relay = ServerProcess(tmp_path / "relay", "--config", str(conf)).start()
    try:
        feeding = threading.Thread(target=send_numbered, args=(relay.port, 0, TLS_TOTAL, 0.03))
        feeding.start()
        _wait(lambda: len(collector.seqs()) >= 5_000, 60, "5k at the collector")
        collector.kill()
        time.sleep(0.3)
        collector.start()
        feeding.join()
        _wait(lambda: len(set(collector.seqs())) >= TLS_TOTAL, 120, "every number over TLS")
    finally:
        relay.stop(signal.SIGTERM)
        collector.stop()
    seqs = collector.seqs()
    missing = TLS_TOTAL - len(set(seqs) & set(range(TLS_TOTAL)))
    print(f"\nrelp-tls -> rsyslogd: sent {TLS_TOTAL}, received {len(seqs)}, missing {missing}")
    assert missing == 0
    assert "(relp-tls)" in relay.log
