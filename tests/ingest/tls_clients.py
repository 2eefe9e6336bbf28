"""Real TLS senders against a real plura-relay process: certificates, the server, the clients.

The server process is stopped (SIGSTOP) while a client sends and closes, so that the client
closes with its stream still in flight (in the kernel's buffers on both sides), as a fast sender
does against a busy server; then it is continued and every message must arrive.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from tests.integration.conftest import ServerProcess

SYSLOG_NG = os.environ.get("SYSLOG_NG", "syslog-ng")


def missing(what: str, install: str) -> None:
    """Skip: `what` is not installed; with CI=true that is a failure."""
    message = f"{what} not installed: {install}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def find_syslog_ng() -> str:
    binary = shutil.which(SYSLOG_NG)
    if binary is None:
        missing("syslog-ng", "syslog-ng-core extracted as .ci/run does")
    assert binary is not None
    return binary


class Pki:
    """A CA and the server's certificate for 127.0.0.1, as files."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        self.ca_file = directory / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        server = ca.issue_cert("127.0.0.1", "localhost")
        self.cert_file, self.key_file = directory / "server.pem", directory / "server.key"
        server.cert_chain_pems[0].write_to_path(str(self.cert_file))
        server.private_key_pem.write_to_path(str(self.key_file))


class TlsServer:
    """plura-relay serving TLS on 127.0.0.1 (port 0), one process."""

    def __init__(self, tmp_path: Path, pki: Pki, listen: str = "", tls: str = "") -> None:
        """`listen`, `tls`: more TOML lines for [listen] and [listen.tls]."""
        config = tmp_path / "relay.toml"
        config.write_text(
            f"[listen]\n{listen}\n"
            f'[listen.tls]\naddresses = ["127.0.0.1:0"]\ncert_file = "{pki.cert_file}"\n'
            f'key_file = "{pki.key_file}"\n{tls}\n'
        )
        self.process = ServerProcess(tmp_path, "--config", str(config))

    def __enter__(self) -> TlsServer:
        self.process.start()  # (waits for the UDP listener: the TLS one is logged after it)
        wait_for(lambda: "metrics and health on" in self.process.log)
        found = re.search(r"listening on tls 127\.0\.0\.1:(\d+)", self.process.log)
        assert found, self.process.log
        self.port = int(found.group(1))
        self.metrics = metrics_port(self.process.log)
        return self

    def __exit__(self, *_: object) -> None:
        assert self.process.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.proc.pid, signal.SIGCONT)
        self.process.stop()

    @contextlib.contextmanager
    def stopped(self) -> Iterator[None]:
        """The server process frozen: it reads nothing until the block ends."""
        assert self.process.proc is not None
        os.kill(self.process.proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.process.proc.pid, signal.SIGCONT)

    def numbers(self, expected: int, timeout_s: float = 20.0) -> list[int]:
        """The numbers of the `seq N` messages written, once `expected` arrived (or time is up)."""
        path = self.process.file("127.0.0.1")
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        size = -1
        while time.monotonic() < deadline:
            now_size = path.stat().st_size if path.exists() else 0
            if now_size != size:
                size, quiet_since = now_size, time.monotonic()
                if not size:
                    continue
                found = [int(n) for n in re.findall(rb"seq (\d+)", path.read_bytes())]
                if len(found) >= expected:
                    return found
            elif time.monotonic() - quiet_since > 3.0:
                break  # nothing new for a while: what is there is all there will be
            time.sleep(0.05)
        if not path.exists():
            return []
        return [int(n) for n in re.findall(rb"seq (\d+)", path.read_bytes())]


def python_client_never_reading(port: int, ca_file: Path, count: int) -> None:
    """Handshake, send `count` LF-framed messages, close: never a read after the handshake."""
    context = ssl.create_default_context(cafile=str(ca_file))
    raw = socket.create_connection(("127.0.0.1", port))
    tls = context.wrap_socket(raw, server_hostname="127.0.0.1")
    payload = b"".join(b"<13>Jan  5 10:11:12 h app: seq %d\n" % n for n in range(count))
    tls.sendall(payload)
    tls.close()  # no unwrap(): closing without close_notify, as a killed sender would


def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s")


def metrics_port(log: str) -> int:
    found = re.search(r"metrics and health on http://127\.0\.0\.1:(\d+)/", log)
    assert found, log
    return int(found.group(1))


def metric(port: int, name: str) -> float:
    """One unlabelled sample from the server's /metrics (0 if absent)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(rf"^plura_relay_{name} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def send_plain_tcp(port: int, first: int, count: int) -> None:
    """`seq N` messages, LF-framed, to a sender's plain TCP input."""
    payload = b"".join(b"<13>Jan  5 10:11:12 h app: seq %d\n" % n for n in range(first, count))
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(payload)


def lines_in(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


class Sender:
    """A real syslog daemon (rsyslogd or syslog-ng) taking plain TCP on `port` and sending
    everything to plura-relay over TLS; it also writes what it took to `copy` (rsyslogd)."""

    def __init__(self, args: list[str], run_dir: Path, port: int) -> None:
        self.args, self.run_dir, self.port = args, run_dir, port
        self.copy = run_dir / "copy.log"
        self.output = run_dir / "sender.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Sender:
        with self.output.open("wb") as out:
            self.proc = subprocess.Popen(
                self.args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        from tests.rsyslogd import tcp_port_accepts

        deadline = time.monotonic() + 15
        while not tcp_port_accepts(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sender did not start: {self.output.read_text()}")
            time.sleep(0.05)
        return self

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def __exit__(self, *_: object) -> None:
        self.stop()


def rsyslog_sender(run_dir: Path, driver: str, tls_port: int, ca_file: Path) -> Sender:
    """rsyslogd: imtcp in, omfwd over TLS with the `driver` netstream driver (gtls, ossl)."""
    from tests.integration.conftest import free_port
    from tests.rsyslogd import find_rsyslogd

    binary = find_rsyslogd()
    if binary is None:
        missing("rsyslogd", "apt-get install rsyslog")
    driver_lib = Path(f"/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_{driver}.so")
    if not driver_lib.exists():
        missing(f"rsyslog's {driver} driver", f"apt-get install rsyslog-{driver}"
                .replace("gtls", "gnutls").replace("ossl", "openssl"))  # fmt: skip
    assert binary is not None
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "work").mkdir(exist_ok=True)
    port = free_port()
    conf = run_dir / "rsyslog.conf"
    conf.write_text(f"""
global(workDirectory="{run_dir / "work"}" defaultNetstreamDriverCAFile="{ca_file}")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{port}")
action(type="omfwd" target="127.0.0.1" port="{tls_port}" protocol="tcp"
       streamDriver="{driver}" streamDriverMode="1" streamDriverAuthMode="x509/certvalid")
action(type="omfile" file="{run_dir / "copy.log"}")
""")
    args = [binary, "-n", "-f", str(conf), "-i", str(run_dir / "rsyslogd.pid")]
    return Sender(args, run_dir, port)


def syslog_ng_sender(run_dir: Path, tls_port: int, ca_file: Path) -> Sender:
    """syslog-ng: a plain TCP source, a TLS network() destination (time_reopen 60 s)."""
    from tests.integration.conftest import free_port

    binary = find_syslog_ng()
    run_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = run_dir / "syslog-ng.conf"
    conf.write_text(f"""@version: 3.38
options {{ time-reopen(60); stats-freq(0); }};
source s_in {{ network(ip("127.0.0.1") port({port}) transport("tcp")); }};
destination d_tls {{ network("127.0.0.1" port({tls_port}) transport("tls")
    tls(ca-file("{ca_file}") peer-verify(required-trusted))); }};
destination d_copy {{ file("{run_dir / "copy.log"}"); }};
log {{ source(s_in); destination(d_tls); destination(d_copy); }};
""")
    args = [binary, "-F", "--no-caps", "-f", str(conf), "-R", str(run_dir / "persist"),
            "-p", str(run_dir / "pid"), "-c", str(run_dir / "ctl")]  # fmt: skip
    return Sender(args, run_dir, port)
