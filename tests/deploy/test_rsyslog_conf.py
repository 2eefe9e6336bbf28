"""rsyslog.d/: the pods' forwarding snippets and PLURA's collector config, run by a real rsyslogd.

- the pod files are exactly what `relay.node.podconf.pod_snippet` renders with the placeholder;
- every file passes `rsyslogd -N1` (and a typo does not, so the check has teeth);
- a pod file dropped into a stock Debian/Ubuntu rsyslog.conf works after the sed its header
  documents (and fails without it: rsyslog refuses imuxsock loaded twice);
- a real rsyslogd with a pod file forwards info (not debug) over UDP, and octet-counted TCP;
  over TCP, messages sent while nothing listens are kept on disk through a restart;
- the collector's CEETemplate is relay.node.rsyslog_conf's, and a real rsyslogd with it files nginx
  messages as their msg (PLURA's `%msg%` rule) in weblog.log and everything else in
  ceelog-<ip>.log.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.node.podconf import NODE_IP_PLACEHOLDER, pod_snippet
from relay.node.rsyslog_conf import (
    CEE_TEMPLATE,
    WEBLOG_TEMPLATE,
    collector_conf,
    origip_collector_rules,
    origip_relay_conf,
    weblog_rule,
)
from tests.deploy.conftest import RSYSLOG_D
from tests.rsyslogd import (
    free_port,
    parse_ceelog_line,
    read_lines,
    stop_process,
    wait_for_lines,
    wait_for_listener,
)

COLLECTOR = RSYSLOG_D / "collector-plura.conf"
POD_FILES = [
    pytest.param("pod-udp.conf", False, id="udp"),
    pytest.param("pod-tcp.conf", True, id="tcp"),
]
IMUXSOCK = 'module(load="imuxsock")'
RECEIVE_TIMEOUT_S = 10.0


def pod_file(name: str) -> str:
    return (RSYSLOG_D / name).read_text()


def validate(rsyslogd: str, text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`rsyslogd -N1` on `text` included from a wrapper that gives it a work directory."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    snippet = tmp_path / "snippet.conf"
    snippet.write_text(text)
    wrapper = tmp_path / "rsyslog.conf"
    wrapper.write_text(f'global(workDirectory="{work}")\ninclude(file="{snippet}")\n')
    return subprocess.run(
        [rsyslogd, "-N1", "-f", str(wrapper)], capture_output=True, text=True, timeout=30
    )


# --------------------------------------------------------------------------- pod_snippet


@pytest.mark.parametrize("name, tcp", POD_FILES)
def test_pod_files_are_what_pod_snippet_renders(name: str, tcp: bool) -> None:
    assert pod_file(name) == pod_snippet(NODE_IP_PLACEHOLDER, tcp=tcp), (
        f"rsyslog.d/{name} differs from relay.node.podconf: regenerate it with pod_snippet"
    )


RENDERED = [
    pytest.param("10.244.2.1", False, 514, "\n*.info @10.244.2.1:514\n", id="udp-v4"),
    pytest.param("fd00:10:244::1", False, 514, "\n*.info @[fd00:10:244::1]:514\n", id="udp-v6"),
    pytest.param("relay.example", False, 5514, "\n*.info @relay.example:5514\n", id="udp-name"),
    pytest.param("10.244.2.1", True, 514, ' target="10.244.2.1" port="514" ', id="tcp-v4"),
    pytest.param(
        "fd00:10:244::1", True, 1514, ' target="fd00:10:244::1" port="1514" ', id="tcp-v6"
    ),
]


@pytest.mark.parametrize("node, tcp, port, expected", RENDERED)
def test_pod_snippet_puts_in_node_and_port(node: str, tcp: bool, port: int, expected: str) -> None:
    text = pod_snippet(node, tcp=tcp, port=port)
    assert expected in text
    assert NODE_IP_PLACEHOLDER not in text


def test_pod_snippet_tcp_is_octet_counted_with_a_disk_assisted_queue() -> None:
    text = pod_snippet("10.244.2.1", tcp=True)
    for setting in (
        'type="omfwd"',
        'protocol="tcp"',
        'TCP_Framing="octet-counted"',
        'queue.type="LinkedList"',
        "queue.filename=",
        "queue.maxDiskSpace=",
        'queue.saveOnShutdown="on"',
        'action.resumeRetryCount="-1"',
    ):
        assert setting in text


@pytest.mark.parametrize("name, tcp", POD_FILES)
def test_pod_files_load_imuxsock_and_not_imklog(name: str, tcp: bool) -> None:
    config_lines = [line for line in pod_file(name).splitlines() if not line.startswith("#")]
    assert IMUXSOCK in config_lines
    assert not [line for line in config_lines if "imklog" in line]


BAD_NODES = [
    pytest.param("10.0.0.1\n*.* /etc/shadow", 514, "IP address or host name", id="newline"),
    pytest.param('10.0.0.1" port="1', 514, "IP address or host name", id="quote"),
    pytest.param("", 514, "IP address or host name", id="empty"),
    pytest.param("-relay.example", 514, "IP address or host name", id="bad-label"),
    pytest.param("10.244.2.1", 0, "port in 1..65535", id="port-0"),
    pytest.param("10.244.2.1", 65536, "port in 1..65535", id="port-65536"),
]


@pytest.mark.parametrize("node, port, error", BAD_NODES)
@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_pod_snippet_rejects(node: str, port: int, error: str, tcp: bool) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        pod_snippet(node, tcp=tcp, port=port)


# --------------------------------------------------------------------------- rsyslogd -N1

VALID = [
    pytest.param(lambda: pod_file("pod-udp.conf").replace("NODE_IP", "10.244.2.1"), id="pod-udp"),
    pytest.param(lambda: pod_file("pod-tcp.conf").replace("NODE_IP", "10.244.2.1"), id="pod-tcp"),
    pytest.param(lambda: pod_snippet("fd00:10:244::1"), id="pod-udp-v6"),
    pytest.param(lambda: pod_snippet("fd00:10:244::1", tcp=True, port=1514), id="pod-tcp-v6"),
    pytest.param(lambda: COLLECTOR.read_text(), id="collector"),
    pytest.param(lambda: (RSYSLOG_D / "collector-origip.conf").read_text(), id="collector-origip"),
    pytest.param(
        lambda: (RSYSLOG_D / "relay-origip.conf").read_text().replace("COLLECTOR_HOST", "10.0.0.9"),
        id="relay-origip",
    ),
]


@pytest.mark.parametrize(
    ("name", "rendered"),
    [
        ("relay-origip.conf", lambda: origip_relay_conf("COLLECTOR_HOST")),
        ("collector-origip.conf", origip_collector_rules),
    ],
)
def test_origip_files_are_what_rsyslog_conf_renders(name: str, rendered: Any) -> None:
    text = (RSYSLOG_D / name).read_text()
    body = "".join(line + "\n" for line in text.splitlines() if not line.startswith("#"))
    assert body == rendered()


@pytest.mark.parametrize("text", VALID)
def test_rsyslogd_accepts(rsyslogd: str, text: object, tmp_path: Path) -> None:
    assert callable(text)
    result = validate(rsyslogd, text(), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "error" not in result.stderr.lower(), result.stderr


def test_rsyslogd_check_has_teeth(rsyslogd: str, tmp_path: Path) -> None:
    text = pod_snippet("10.244.2.1", tcp=True).replace("TCP_Framing", "TCP_Framin")
    result = validate(rsyslogd, text, tmp_path)
    assert result.returncode != 0
    assert "'TCP_Framin' not known" in result.stderr


# The module lines of stock rsyslog.conf files, as pod images ship them.
STOCK_MODULES = [
    pytest.param(
        'module(load="imuxsock") # provides support for local system logging\n'
        'module(load="imklog")   # provides kernel logging support\n'
        '#module(load="immark")  # provides --MARK-- message capability\n',
        id="debian-12",
    ),
    pytest.param(
        'module(load="imuxsock") # provides support for local system logging\n'
        'module(load="imklog" permitnonkernelfacility="on")\n',
        id="ubuntu-22.04",
    ),
    pytest.param("$ModLoad imuxsock\n$ModLoad imklog\n", id="legacy"),
]
STOCK_REST = """\
$FileOwner root
$FileGroup adm
$FileCreateMode 0640
$DirCreateMode 0755
$Umask 0022
$WorkDirectory {work}
$IncludeConfig {include_dir}/*.conf
*.*;auth,authpriv.none		-/var/log/syslog
auth,authpriv.*			/var/log/auth.log
*.emerg				:omusrmsg:*
"""


def documented_sed(snippet: str) -> str:
    """The shell command the snippet's header tells to run on the image's rsyslog.conf."""
    header = [line.removeprefix("#") for line in snippet.splitlines() if line.startswith("#")]
    start = next(i for i, line in enumerate(header) if line.strip().startswith("sed "))
    command = header[start].strip()
    while command.endswith("\\"):
        start += 1
        command = command[:-1] + header[start].strip()
    return command


@pytest.mark.parametrize("name, tcp", POD_FILES)
def test_readme_gives_the_same_sed(name: str, tcp: bool) -> None:
    command = documented_sed(pod_file(name)).removesuffix(" /etc/rsyslog.conf")
    assert command in (RSYSLOG_D / "README.md").read_text()


@pytest.mark.parametrize("modules", STOCK_MODULES)
@pytest.mark.parametrize("name, tcp", POD_FILES)
def test_pod_file_drops_into_stock_config_after_documented_sed(
    rsyslogd: str, modules: str, name: str, tcp: bool, tmp_path: Path
) -> None:
    include_dir, work = tmp_path / "rsyslog.d", tmp_path / "work"
    include_dir.mkdir()
    work.mkdir()
    snippet = pod_file(name)
    (include_dir / "plura.conf").write_text(snippet.replace("NODE_IP", "10.244.2.1"))
    main = tmp_path / "rsyslog.conf"
    main.write_text(modules + STOCK_REST.format(work=work, include_dir=include_dir))

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [rsyslogd, "-N1", "-f", str(main)], capture_output=True, text=True, timeout=30
        )

    before = check()
    assert before.returncode != 0, "expecting rsyslog to refuse imuxsock loaded twice"
    assert "already in this config" in before.stderr
    command = documented_sed(snippet)
    assert command.endswith(" /etc/rsyslog.conf"), command
    subprocess.run(
        ["sh", "-c", command.replace("/etc/rsyslog.conf", str(main))], check=True, timeout=30
    )
    after = check()
    assert after.returncode == 0, after.stderr
    active = [line for line in main.read_text().splitlines() if not line.startswith("#")]
    assert not [line for line in active if "imklog" in line or "imuxsock" in line]


# --------------------------------------------------------------------------- live rsyslogd


def run_rsyslogd(rsyslogd: str, text: str, tmp_path: Path) -> subprocess.Popen[bytes]:
    """rsyslogd in the foreground on `text` (with a work directory); the caller stops it."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    snippet = tmp_path / "snippet.conf"
    snippet.write_text(text)
    wrapper = tmp_path / "rsyslog.conf"
    wrapper.write_text(f'global(workDirectory="{work}")\ninclude(file="{snippet}")\n')
    out = (tmp_path / "rsyslogd.out").open("ab")
    with out:
        return subprocess.Popen(
            [rsyslogd, "-n", "-f", str(wrapper), "-i", str(tmp_path / "rsyslogd.pid")],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


class PodRsyslogd:
    """rsyslogd with a pod snippet, its /dev/log moved into `tmp_path` (the host's is not ours)."""

    def __init__(self, rsyslogd: str, snippet: str, tmp_path: Path) -> None:
        self.socket_path = tmp_path / "log"
        self.socket_path.unlink(missing_ok=True)
        assert snippet.count(IMUXSOCK) == 1
        moved = f'module(load="imuxsock" SysSock.Name="{self.socket_path}")'
        self.proc = run_rsyslogd(rsyslogd, snippet.replace(IMUXSOCK, moved), tmp_path)
        self.output = tmp_path / "rsyslogd.out"
        deadline = time.monotonic() + RECEIVE_TIMEOUT_S
        while not self.socket_path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                stop_process(self.proc)
                raise RuntimeError(f"rsyslogd did not start: {self.output.read_text()}")
            time.sleep(0.02)

    def log(self, *messages: bytes) -> None:
        """What a program in the pod does: datagrams to /dev/log."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            for message in messages:
                s.sendto(message, str(self.socket_path))


@pytest.fixture
def udp_receiver() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(RECEIVE_TIMEOUT_S)
        yield s


@pytest.fixture
def tcp_receiver() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        s.settimeout(RECEIVE_TIMEOUT_S)
        yield s


FORWARDED = re.compile(rb"<14>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ app: (.*)", re.DOTALL)


def test_pod_udp_forwards_info_and_not_debug(
    rsyslogd: str, udp_receiver: socket.socket, tmp_path: Path
) -> None:
    port = udp_receiver.getsockname()[1]
    pod = PodRsyslogd(rsyslogd, pod_snippet("127.0.0.1", port=port), tmp_path)
    try:
        pod.log(b"<15>app: debug stays in the pod", b"<14>app: hello over udp")
        datagram = udp_receiver.recv(65535)
    finally:
        stop_process(pod.proc)
    match = FORWARDED.fullmatch(datagram)
    assert match, datagram
    assert match[1] == b"hello over udp"


class OctetCountedReader:
    """Reads `MSG-LEN SP SYSLOG-MSG` frames (RFC 6587 3.4.1) off a TCP connection."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buffer = b""

    def frame(self) -> bytes:
        """The next frame, as received (its count included)."""
        while True:
            count, space, rest = self.buffer.partition(b" ")
            if space and count.isdigit() and len(rest) >= int(count):
                self.buffer = rest[int(count) :]
                return count + space + rest[: int(count)]
            assert len(self.buffer) < 65536 and (not space or count.isdigit()), self.buffer
            chunk = self.conn.recv(65536)
            assert chunk, f"connection closed after {self.buffer!r}"
            self.buffer += chunk


def test_pod_tcp_forwards_octet_counted_frames(
    rsyslogd: str, tcp_receiver: socket.socket, tmp_path: Path
) -> None:
    port = tcp_receiver.getsockname()[1]
    pod = PodRsyslogd(rsyslogd, pod_snippet("127.0.0.1", tcp=True, port=port), tmp_path)
    try:
        pod.log(b"<15>app: debug stays in the pod", b"<14>app: hello over tcp")
        conn, _ = tcp_receiver.accept()
        with conn:
            conn.settimeout(RECEIVE_TIMEOUT_S)
            data = OctetCountedReader(conn).frame()
    finally:
        stop_process(pod.proc)
    count, _, frame = data.partition(b" ")
    assert int(count) == len(frame), data
    match = FORWARDED.fullmatch(frame)
    assert match, frame
    assert match[1] == b"hello over tcp"


def test_pod_tcp_queue_keeps_messages_through_an_outage_and_a_restart(
    rsyslogd: str, tmp_path: Path
) -> None:
    """Nothing listens: the queue goes to disk at shutdown and is sent after the restart."""
    port = free_port()
    snippet = pod_snippet("127.0.0.1", tcp=True, port=port)
    messages = [b"<14>app: queued %d" % i for i in range(5)]
    pod = PodRsyslogd(rsyslogd, snippet, tmp_path)
    try:
        pod.log(*messages)
        time.sleep(0.5)  # the action fails to connect and suspends
    finally:
        stop_process(pod.proc)
    assert (tmp_path / "work" / "plura-relay-fwd.qi").exists(), "queue not saved on shutdown"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        listener.settimeout(RECEIVE_TIMEOUT_S)
        pod = PodRsyslogd(rsyslogd, snippet, tmp_path)
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(RECEIVE_TIMEOUT_S)
                reader = OctetCountedReader(conn)
                frames = [reader.frame() for _ in messages]
        finally:
            stop_process(pod.proc)
    bodies = [FORWARDED.fullmatch(frame.partition(b" ")[2]) for frame in frames]
    assert [m[1] if m else frame for m, frame in zip(bodies, frames, strict=True)] == [
        b"queued %d" % i for i in range(5)
    ]


# --------------------------------------------------------------------------- collector


def test_collector_template_is_relays() -> None:
    text = COLLECTOR.read_text()
    assert CEE_TEMPLATE in text, "collector-plura.conf's CEETemplate differs from relay's"
    lines = {line.strip() for line in text.splitlines()}
    for line in collector_conf("/var/log/plura").splitlines():
        if line.startswith(('template(name="CeeLogFile"', 'action(type="omfile"')):
            assert line in lines, f"collector-plura.conf lacks {line!r}"
    for line in (WEBLOG_TEMPLATE + weblog_rule()).splitlines():
        assert line.strip() in lines, f"collector-plura.conf lacks {line!r}"


NGINX_JSON = (
    '{"remote_addr":"10.244.2.7","request_body":"{\\"user\\":\\"홍길동\\"}","status":"200"}'
)
COLLECTED = [
    (b"<190>Nov 26 10:00:00 web-1 nginx: " + NGINX_JSON.encode(), "weblog"),
    (b"<38>Nov 26 10:00:01 pod-a sshd[12]: Accepted publickey for root", "ceelog"),
    (b"<190>Nov 26 10:00:02 pod-a app: an nginx-like word in msg only", "ceelog"),
    (b"<190>Nov 26 10:00:03 web-1 nginx:  two spaces", "weblog"),
]
FILES = {"weblog": "weblog.log", "ceelog": "ceelog-127.0.0.1.log"}


def test_collector_files_weblog_and_ceelog(rsyslogd: str, tmp_path: Path) -> None:
    port, log_dir = free_port(), tmp_path / "plura"
    text = COLLECTOR.read_text()
    assert text.count('port="514"') == 2
    assert text.count('"/var/log/plura/') == 2
    text = text.replace('port="514"', f'port="{port}" address="127.0.0.1"')
    proc = run_rsyslogd(rsyslogd, text.replace('"/var/log/plura/', f'"{log_dir}/'), tmp_path)
    try:
        wait_for_listener(port, proc=proc)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for raw, _ in COLLECTED:
                s.sendto(raw, ("127.0.0.1", port))
        for name in ("weblog", "ceelog"):
            expected = sum(destination == name for _, destination in COLLECTED)
            wait_for_lines(log_dir / FILES[name], expected)
        time.sleep(0.2)  # anything misrouted would arrive meanwhile
        weblog = read_lines(log_dir / FILES["weblog"])
        ceelog = read_lines(log_dir / FILES["ceelog"])
    finally:
        stop_process(proc)
    # PLURA's rule writes %msg%: the space rsyslog keeps after "nginx:" is in the line
    assert weblog == [b" " + NGINX_JSON.encode() + b"\n", b"  two spaces\n"]
    assert json.loads(weblog[0])["request_body"] == '{"user":"홍길동"}'
    fields = [parse_ceelog_line(line) for line in ceelog]
    assert [f["syslogtag"] for f in fields] == [b"sshd[12]:", b"app:"]
    assert fields[0]["msg"] == b" Accepted publickey for root"
