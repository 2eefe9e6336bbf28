"""Relay mode against a real rsyslogd: PLURA's `[origip=...]` pattern, in both directions.

PLURA's relay pattern (MISSION.md, "Origin IP through NAT"): a relay forwards each message as
`<PRI>TIMESTAMP HOSTNAME TAG [origip=<fromhost-ip>] MSG`; the collector files it as
`ceelog-<origip>.log`, strips the stamp from msg, and files messages without one elsewhere.

1. plura-relay A relays to rsyslogd running PLURA's collector rules: rsyslogd must file each
   message under the original sender with the fields A wrote for it itself.
2. rsyslogd relays with PLURA's relay template to plura-relay B (`origin.trust_origip`): B must
   file each message under the original sender with the fields rsyslogd wrote for it itself,
   and register the sender as a child `via` the relay.

Compared fields: hostname, syslogtag, programname, pri, msg (timegenerated is the reception
time, the text fields follow from these). The one allowed difference is a space in front of
msg that did not start with one: the stamp needs a space after a tag without `:`, and that
space ends up in msg (see `_gains_space_*` below).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from relay.node.rsyslog_conf import origip_collector_rules, origip_relay_conf
from tests.integration.conftest import ServerProcess
from tests.rsyslogd import (
    LISTEN_HOST,
    free_port,
    read_ceelog,
    reference_conf,
    send,
    stop_process,
    tcp_port_accepts,
    wait_for_lines,
    wait_for_listener,
)

pytestmark = pytest.mark.differential

SENDERS = ("127.0.0.2", "127.0.0.3")
RELAY_HOST = "127.0.0.1"
"""Where the relay in the middle sends from (its forwarding sockets are not bound)."""
FIELDS = ("hostname", "syslogtag", "programname", "pri", "msg")
MESSAGES = [
    # RFC 3164, tag with `:`, msg starting with a space (the common case)
    b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8",
    # tag with a pid; `[` `]` and `/` in msg
    b"<86>Jan  5 10:11:12 host01 sshd[4242]: Accepted publickey for root from 10.0.0.9 "
    b"port 50022 ssh2: RSA SHA256:abc/def",
    # nginx access log: quotes and brackets (jsonf escaping of the stripped msg)
    b'<190>Jan  5 10:11:12 web01 nginx: 10.1.2.3 - - [05/Jan/2024:10:11:12 +0000] "GET '
    b'/index.html?q=[origip=1.2.3.4] HTTP/1.1" 200 612 "-" "curl/8.4.0"',
    # tag without `:` (its msg starts with the space after the tag)
    b"<14>Jan  5 10:11:12 host01 app hi without a colon",
    # tag with `:` directly followed by msg (no space)
    b"<30>Jan  5 10:11:12 host01 systemd[1]:Started Session 7 of user root.",
    # RFC 5424: rsyslog's tag is APP-NAME[PROCID] without `:`, msg has no leading space
    b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog 1234 ID47 [exampleSDID@32473"
    b' iut="3" eventSource="Application"] An application event log entry',
    # RFC 5424 without PROCID and SD
    b"<13>1 2024-01-05T10:11:12.5+09:00 host02 myapp - - - plain 5424",
    # UTF-8 (Korean) in msg, and a TAB
    b"<13>Jan  5 10:11:12 host01 app[1]: \xed\x95\x9c\xea\xb8\x80 \xeb\xa1\x9c\xea\xb7\xb8\tok",
]
WAIT_S = 15.0
RSYSLOGD_START_S = 10.0


# --------------------------------------------------------------------------- processes


@contextmanager
def rsyslogd(binary: str, run_dir: Path, conf: str, port: int, *, udp: bool) -> Iterator[None]:
    """rsyslogd in the foreground with `conf` (validated first), listening on `port`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    conf_path = run_dir / "rsyslog.conf"
    conf_path.write_text(conf)
    check = subprocess.run(
        [binary, "-N1", "-f", str(conf_path)], capture_output=True, timeout=30, check=False
    )
    assert check.returncode == 0, f"rsyslogd rejects the config:\n{check.stderr.decode()}\n{conf}"
    out_path = run_dir / "rsyslogd.out"
    with out_path.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "-n", "-f", str(conf_path), "-i", str(run_dir / "rsyslogd.pid")],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        if udp:
            wait_for_listener(port, timeout=RSYSLOGD_START_S, proc=proc)
        else:
            _wait_for_tcp(port, proc)
        yield
    finally:
        stop_process(proc)


def _wait_for_tcp(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + RSYSLOGD_START_S
    while not tcp_port_accepts(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"rsyslogd is not listening on TCP {port}")
        time.sleep(0.05)


@contextmanager
def plura_relay(path: Path, config: str) -> Iterator[ServerProcess]:
    """`python -m relay serve --config <path>/relay.toml` (ServerProcess: own port, logs)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "relay.toml").write_text(config)
    server = ServerProcess(path, "--config", str(path / "relay.toml"))
    try:
        yield server.start()
    finally:
        stop_server(server)


def stop_server(server: ServerProcess) -> None:
    """Stop the server if it runs (idempotent: `finally` and an explicit stop may both call)."""
    if server.proc is not None and server.proc.returncode is None:
        try:
            server.stop()
        finally:
            server.proc.poll()
            if server.proc.returncode is None:  # did not stop within stop()'s timeout
                server.proc.kill()
                server.proc.wait()
            server.stderr.close()


# --------------------------------------------------------------------------- comparing


def records(path: Path, count: int) -> list[dict[str, bytes]]:
    """The compared fields of the `count` lines in a ceelog file (waits for them)."""
    wait_for_lines(path, count, timeout=WAIT_S)
    time.sleep(0.2)  # a line too many would come right behind: let it show up
    return [{k: r[k] for k in FIELDS} for r in read_ceelog(path)]


def relayed(
    reference: list[dict[str, bytes]], gains_space: Callable[[dict[str, bytes]], bool]
) -> list[dict[str, bytes]]:
    """What the collector behind the relay should have for these reference records."""
    return [{**r, "msg": b" " + r["msg"]} if gains_space(r) else r for r in reference]


def _gains_space_after_plura_relay(record: dict[str, bytes]) -> bool:
    """plura-relay's `rfc3164-origip` (relay/forward/origin.py `stamped`): after a tag
    without `:` the stamp needs a space before it, else it would be read as part of the tag;
    that space is then msg's."""
    return not record["syslogtag"].endswith(b":") and not record["msg"].startswith(b" ")


def _gains_space_after_rsyslog(record: dict[str, bytes]) -> bool:
    """rsyslog with PLURA's template puts a space after every tag (relay.node.rsyslog_conf.ORIGIP_RELAY_TEMPLATE)."""
    return not record["msg"].startswith(b" ")


def send_all(port: int, src_ip: str) -> None:
    """MESSAGES over UDP, then again over TCP (octet counting)."""
    send("udp", port, src_ip, MESSAGES)
    time.sleep(0.3)  # let the datagrams through first: one file, two sockets, one order
    send("tcp-octet", port, src_ip, MESSAGES)


# --------------------------------------------------------------------------- 1: plura-relay -> rsyslogd


def origip_collector_conf(log_dir: Path, port: int, work_dir: Path) -> str:
    """imtcp only (the relay forwards over TCP) and the shipped collector rules
    (rsyslog.d/collector-origip.conf, relay.node.rsyslog_conf.origip_collector_rules)."""
    return (
        f'global(net.enableDNS="off" workDirectory="{work_dir}")\n'
        'module(load="imtcp")\n'
        f'input(type="imtcp" port="{port}" address="{LISTEN_HOST}")\n'
        + origip_collector_rules(str(log_dir))
    )


def relay_toml(upstream_port: int) -> str:
    return f"""\
[[forward]]
name = "collector"
host = "127.0.0.1"
port = {upstream_port}
protocol = "tcp"
framing = "octet-counting"
format = "rfc3164-origip"
confirm_after_s = 0.2
reconnect_initial_s = 0.1
reconnect_max_s = 0.5
"""


def test_rsyslogd_collector_files_plura_relays_messages_under_the_senders(
    tmp_path: Path, rsyslogd_binary: str
) -> None:
    port, log_dir = free_port(), tmp_path / "rsyslogd-logs"
    log_dir.mkdir()
    conf = origip_collector_conf(log_dir, port, tmp_path / "rsyslogd")
    count = 2 * len(MESSAGES)
    with (
        rsyslogd(rsyslogd_binary, tmp_path / "rsyslogd", conf, port, udp=False),
        plura_relay(tmp_path / "a", relay_toml(port)) as a,
    ):
        for src_ip in SENDERS:
            send_all(a.port, src_ip)
        for src_ip in SENDERS:
            own = records(a.file(src_ip), count)
            upstream = records(log_dir / f"ceelog-{src_ip}.log", count)
            assert upstream == relayed(own, _gains_space_after_plura_relay), src_ip
            assert not any(b"[origip=" + src_ip.encode() in r["msg"] for r in upstream)
        # the rules' other branch works: a message without a stamp goes to the fallback file
        send("tcp-lf", port, RELAY_HOST, [b"<13>Jan  5 10:11:12 host01 app: no stamp"])
        fallback = records(log_dir / "ceelog-fallback.log", 1)
        # (rsyslogd's own messages, if it logs any, would go there too)
        assert [r["msg"] for r in fallback if r["hostname"] == b"host01"] == [b" no stamp"]
    assert sorted(p.name for p in log_dir.iterdir()) == [
        "ceelog-127.0.0.2.log", "ceelog-127.0.0.3.log", "ceelog-fallback.log",
    ]  # fmt: skip


# --------------------------------------------------------------------------- 2: rsyslogd -> plura-relay


def rsyslog_relay_conf(log_dir: Path, port: int, work_dir: Path, upstream_port: int) -> str:
    """PLURA's collector config (its ceelog is the reference) plus the shipped relay action
    (rsyslog.d/relay-origip.conf, relay.node.rsyslog_conf.origip_relay_conf). About its template:
    the collector reads ` [origip=X]<msg>` as msg (the space after the tag is msg's), and
    split_origin keeps that space and drops one space after the stamp, the one
    `sp-if-no-1st-sp` adds or msg's own: a msg with a leading space comes out unchanged, any
    other msg gains one (`su:x` -> ` x`)."""
    return reference_conf(log_dir, port, LISTEN_HOST, work_dir) + origip_relay_conf(
        "127.0.0.1", upstream_port
    )


COLLECTOR_TOML = """\
[origin]
trust_origip = true
trusted_sources = ["127.0.0.1/32"]
"""


def test_plura_relay_collector_files_rsyslog_relays_messages_under_the_senders(
    tmp_path: Path, rsyslogd_binary: str
) -> None:
    port, log_dir = free_port(), tmp_path / "rsyslogd-logs"
    count = 2 * len(MESSAGES)
    with plura_relay(tmp_path / "b", COLLECTOR_TOML) as b:
        conf = rsyslog_relay_conf(log_dir, port, tmp_path / "rsyslogd", b.port)
        with rsyslogd(rsyslogd_binary, tmp_path / "rsyslogd", conf, port, udp=True):
            for src_ip in SENDERS:
                send_all(port, src_ip)
            for src_ip in SENDERS:
                reference = records(log_dir / f"ceelog-{src_ip}.log", count)
                collected = records(b.file(src_ip), count)
                assert collected == relayed(reference, _gains_space_after_rsyslog), src_ip
                assert not any(b"[origip=" + src_ip.encode() in r["msg"] for r in collected)
        stop_server(b)  # the registry is complete once B stopped
    children = {c["ip"]: c for c in list_children(b.state_dir)}
    for src_ip in SENDERS:
        assert children[src_ip]["via"] == RELAY_HOST, children
        assert children[src_ip]["messages"] == count, children[src_ip]


def list_children(state_dir: Path) -> list[dict[str, object]]:
    """`plura-relay children --json`, as an operator would look."""
    out = subprocess.run(
        [sys.executable, "-m", "relay", "children", "--state-dir", str(state_dir), "--json"],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    listed: list[dict[str, object]] = json.loads(out)
    return listed
