"""A rolling update that loses nothing: a second plura-relay on the same address, log dir and
state dir starts beside the first, the first gets SIGTERM, and every message sent meanwhile is
counted: numbered UDP at 20,000 msg/s, numbered TCP from a sender that checks for a close
before each send as rsyslog's omfwd does, and a real rsyslogd with the pod's TCP snippet.

With SIGTERM: 0 lost, no line torn or interleaved, no duplicate, the registry's counts equal
the lines. With SIGKILL the test prints what was lost (it is not zero: the kernel's queues of
the killed process go with it).
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from relay.node.podconf import pod_snippet
from tests.integration.conftest import ServerProcess
from tests.rsyslogd import find_rsyslogd, stop_process

UDP_RATE = 20_000  # msg/s
TCP_RATE = 5_000
RSYSLOG_RATE = 2_000
UDP_SOURCE, TCP_SOURCE, RSYSLOG_SOURCE = "127.0.0.2", "127.0.0.3", "127.0.0.1"
IMUXSOCK = 'module(load="imuxsock")'
NUMBER = re.compile(r"(udp|tcp|rsy)-(\d+)-x+$")


class Paced(threading.Thread):
    """Calls `send(n)` for n = 0, 1, ... at `rate` per second until stopped."""

    def __init__(self, rate: int, send: object) -> None:
        super().__init__(daemon=True)
        self.rate, self._send, self.sent = rate, send, 0
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        start = time.monotonic()
        try:
            while not self.stopping.is_set():
                due = int((time.monotonic() - start) * self.rate)
                while self.sent < due:
                    self._send(self.sent)  # type: ignore[operator]
                    self.sent += 1
                time.sleep(0.002)
        except BaseException as exc:
            self.error = exc

    def stop(self) -> int:
        self.stopping.set()
        self.join(10)
        assert self.error is None, repr(self.error)
        return self.sent


def message(kind: str, n: int) -> bytes:
    # padded so that a torn line could not pass for another number
    return b"<13>Jan  5 10:11:12 host app: %s-%d-%s" % (kind.encode(), n, b"x" * 40)


class UdpSender:
    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((UDP_SOURCE, 0))
        self.port = port

    def __call__(self, n: int) -> None:
        self.sock.sendto(message("udp", n), ("127.0.0.1", self.port))


class OmfwdLikeSender:
    """One LF-framed message per send; before each, a non-blocking MSG_PEEK: a close (or a
    reset) seen there means reconnect first, as omfwd does (nsd_ptcp CheckConnection)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None
        self.reconnects = -1

    def _connect(self) -> socket.socket:
        if self.sock is not None:
            self.sock.close()
        sock = socket.socket()
        sock.bind((TCP_SOURCE, 0))
        sock.connect(("127.0.0.1", self.port))
        self.reconnects += 1
        self.sock = sock
        return sock

    def __call__(self, n: int) -> None:
        sock = self.sock or self._connect()
        try:
            if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                sock = self._connect()  # the server closed its side
        except BlockingIOError:
            pass  # open, nothing to read: the usual case
        except ConnectionError:
            sock = self._connect()
        try:
            sock.sendall(message("tcp", n) + b"\n")
        except ConnectionError:  # reset (a killed server): omfwd retries the message
            self._connect().sendall(message("tcp", n) + b"\n")


class PodRsyslog:
    """A real rsyslogd with the pod's TCP snippet (octet-counted, disk-assisted queue),
    fed numbered messages through its own /dev/log (rate limit off)."""

    def __init__(self, rsyslogd: str, port: int, tmp_path: Path) -> None:
        work = tmp_path / "rsyslog-work"
        work.mkdir()
        self.log_socket = tmp_path / "rsyslog-devlog"
        snippet = pod_snippet("127.0.0.1", tcp=True, port=port).replace(
            IMUXSOCK,
            f'module(load="imuxsock" SysSock.Name="{self.log_socket}" '
            'SysSock.RateLimit.Interval="0")',
        )
        conf = tmp_path / "rsyslog.conf"
        conf.write_text(f'global(workDirectory="{work}")\n{snippet}')
        self.out = (tmp_path / "rsyslogd.out").open("ab")
        self.proc = subprocess.Popen(
            [rsyslogd, "-n", "-f", str(conf), "-i", str(tmp_path / "rsyslogd.pid")],
            stdout=self.out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not self.log_socket.exists():
            assert self.proc.poll() is None and time.monotonic() < deadline, "rsyslogd failed"
            time.sleep(0.02)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def __call__(self, n: int) -> None:
        self.sock.sendto(b"<14>app: rsy-%d-%s" % (n, b"x" * 40), str(self.log_socket))

    def stop(self) -> None:
        stop_process(self.proc)
        if not self.out.closed:
            self.out.close()


def numbers(path: Path, kind: str) -> Counter[int]:
    """The message numbers in a ceelog file; every line must be one whole ceelog object."""
    found: Counter[int] = Counter()
    if not path.exists():
        return found
    for line in path.read_bytes().split(b"\n")[:-1]:
        msg = json.loads(line)["ceelog"]["msg"]  # a torn or interleaved line fails here
        match = NUMBER.search(msg)
        assert match and match[1] == kind, line
        found[int(match[2])] += 1
    return found


def wait_for(path: Path, kind: str, count: int, timeout_s: float = 15) -> Counter[int]:
    """Until `count` numbers are there, or none came for 2 s (rsyslog retries in 1 s)."""
    deadline = time.monotonic() + timeout_s
    found, changed = numbers(path, kind), time.monotonic()
    while len(found) < count and time.monotonic() < min(deadline, changed + 2.0):
        time.sleep(0.1)
        if len(now := numbers(path, kind)) != len(found):
            found, changed = now, time.monotonic()
    return found


def missing_numbers(found: Counter[int], sent: int) -> list[int]:
    return [n for n in range(sent) if n not in found]


class Upstream(threading.Thread):
    """A collector for the relay's [[forward]] target: LF-framed lines, numbers counted."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.found: dict[str, Counter[int]] = {k: Counter() for k in ("udp", "tcp", "rsy")}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while chunk := conn.recv(65536):
                *lines, buffer = (buffer + chunk).split(b"\n")
                for line in lines:
                    if match := NUMBER.search(line.decode()):
                        self.found[match[1]][int(match[2])] += 1

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)
        self.listener.close()


def update(tmp_path: Path, stop_old: signal.Signals, *extra: str) -> dict[str, object]:
    rsyslogd = find_rsyslogd()
    if rsyslogd is None:
        from tests.deploy.conftest import missing

        missing("rsyslogd", "apt-get install rsyslog")
    old = ServerProcess(tmp_path, *extra).start()
    new = ServerProcess(tmp_path, *extra)
    new.port = old.port
    new.args[new.args.index("--listen") + 1] = f"127.0.0.1:{old.port}"
    new.stderr_path = tmp_path / "new.err"
    rsyslog = PodRsyslog(rsyslogd, old.port, tmp_path)
    tcp, udp = OmfwdLikeSender(old.port), UdpSender(old.port)
    senders = {
        "udp": Paced(UDP_RATE, udp),
        "tcp": Paced(TCP_RATE, tcp),
        "rsy": Paced(RSYSLOG_RATE, rsyslog),
    }
    try:
        for sender in senders.values():
            sender.start()
        time.sleep(1.0)
        new.start()  # binds the same address and waits for the state dir
        time.sleep(0.5)
        took_over = time.monotonic()
        old.send_signal(stop_old)
        code = old.proc.wait(15) if old.proc is not None else None
        old.stderr.close()
        time.sleep(1.0)
        sent = {kind: sender.stop() for kind, sender in senders.items()}
        files = {"udp": UDP_SOURCE, "tcp": TCP_SOURCE, "rsy": RSYSLOG_SOURCE}
        found = {k: wait_for(new.file(ip), k, sent[k]) for k, ip in files.items()}
        rsyslog.stop()
        assert new.stop() == 0, new.log
    finally:
        for sender in senders.values():
            sender.stopping.set()
        for sender in senders.values():
            sender.join(5)
        if rsyslog.proc.poll() is None:
            rsyslog.stop()
        for sock in (udp.sock, tcp.sock, rsyslog.sock):
            if sock is not None:
                sock.close()
        for process in (old, new):
            if process.proc is not None and process.proc.poll() is None:
                process.proc.kill()
                process.proc.wait()
    children = {
        c["ip"]: c for c in json.loads((new.state_dir / "children.json").read_text())["children"]
    }
    return {
        "code": code, "sent": sent, "found": found, "children": children,
        "reconnects": tcp.reconnects, "new_log": new.log, "handover_s": took_over,
    }  # fmt: skip


@pytest.mark.timeout(90)
def test_sigterm_update_loses_nothing(tmp_path: Path) -> None:
    result = update(tmp_path, signal.SIGTERM)
    sent, found = result["sent"], result["found"]
    assert isinstance(sent, dict) and isinstance(found, dict)
    print(f"\nSIGTERM update: sent {sent}; TCP sender reconnected {result['reconnects']}x")
    assert result["code"] == 0
    assert "is held by another plura-relay" in str(result["new_log"])
    assert "took over" in str(result["new_log"])
    assert sent["udp"] >= UDP_RATE * 2  # the stream ran through the update
    for kind in ("udp", "tcp", "rsy"):
        counts = found[kind]
        assert missing_numbers(counts, sent[kind]) == [], f"{kind}: lost"
        assert [n for n, c in counts.items() if c > 1] == [], f"{kind}: duplicated"
        assert max(counts) == sent[kind] - 1
    assert int(str(result["reconnects"])) >= 1  # it did move to the new process
    children = result["children"]
    assert isinstance(children, dict)
    for kind, ip in (("udp", UDP_SOURCE), ("tcp", TCP_SOURCE), ("rsy", RSYSLOG_SOURCE)):
        assert children[ip]["messages"] == sum(found[kind].values()), ip


@pytest.mark.timeout(90)
def test_sigkill_update_states_what_is_lost(tmp_path: Path) -> None:
    result = update(tmp_path, signal.SIGKILL)
    sent, found, children = result["sent"], result["found"], result["children"]
    assert isinstance(sent, dict) and isinstance(found, dict) and isinstance(children, dict)
    assert result["code"] == -signal.SIGKILL
    assert "took over" in str(result["new_log"])
    lost = {k: len(missing_numbers(found[k], sent[k])) for k in sent}
    ips = {"udp": UDP_SOURCE, "tcp": TCP_SOURCE, "rsy": RSYSLOG_SOURCE}
    undercount = {k: sum(found[k].values()) - children[ips[k]]["messages"] for k in sent}
    print(
        f"\nSIGKILL update: sent {sent}; lost {lost} (what sat in the killed process's socket "
        f"queues and not yet written lines); duplicated "
        f"{ {k: sum(c - 1 for c in found[k].values() if c > 1) for k in sent} }; registry "
        f"counts short by {undercount} (observed after the killed one's last save)"
    )
    for kind in sent:  # whatever was lost, every line is whole and the stream went on
        assert max(found[kind]) >= sent[kind] - 1 - UDP_RATE // 100


@pytest.mark.timeout(120)
def test_sigterm_update_hands_over_the_forward_spool(tmp_path: Path) -> None:
    """The new process holds what its target is offered until the old one has released the
    spool, then sends the old one's unconfirmed tail and its own: every message upstream."""
    upstream = Upstream()
    upstream.start()
    config = tmp_path / "relay.toml"
    config.write_text(
        f'[[forward]]\nname = "up"\nhost = "127.0.0.1"\nport = {upstream.port}\n'
        'framing = "lf"\nconfirm_after_s = 0.2\n'
    )
    try:
        result = update(tmp_path, signal.SIGTERM, "--config", str(config))
    finally:
        upstream.stop()
    sent, found = result["sent"], result["found"]
    assert isinstance(sent, dict) and isinstance(found, dict)
    for kind in sent:
        assert missing_numbers(found[kind], sent[kind]) == [], f"{kind}: not in the files"
        assert missing_numbers(upstream.found[kind], sent[kind]) == [], f"{kind}: not upstream"
    duplicated = {k: sum(c - 1 for c in upstream.found[k].values() if c > 1) for k in sent}
    print(f"\nforwarded through the update: sent {sent}; duplicated upstream {duplicated}")
