"""Test support for comparing with rsyslog: the corpus, a real rsyslogd, senders, ceelog readers.

- `load_corpus()` reads `tests/corpus/*.jsonl` (see `tests/corpus/README.md`).
- `RsyslogdProcess(log_dir, port)` runs rsyslogd with PLURA's collector config
  (`relay.node.rsyslog_conf.collector_conf`) for the duration of a `with` block.
- `send(transport, port, src_ip, payloads)` sends from a chosen loopback address, so each
  origin lands in its own `ceelog-<ip>.log`.
- `read_ceelog(path)` splits ceelog lines into their eleven fields as bytes, without going
  through `json.loads` (lines may hold raw invalid UTF-8, which must survive byte for byte).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from relay.node.rsyslog_conf import CEE_PROPERTIES, collector_conf

CORPUS_DIR = Path(__file__).parent / "corpus"
TRANSPORTS: tuple[str, ...] = ("udp", "tcp-lf", "tcp-octet")
MAX_MESSAGE_BYTES = 8096
"""rsyslog's default maxMessageSize: UDP truncates beyond it, TCP splits."""
CEE_FIELDS: tuple[str, ...] = ("timegenerated", *CEE_PROPERTIES)
LISTEN_HOST = "127.0.0.1"
UDP_PAUSE_S = 0.0002
"""Pause between datagrams: loopback never loses packets unless the receive buffer overflows."""
RSYSLOGD_UDP_RCVBUF = "8m"
"""imudp receive buffer, as plura-relay's default: the reference must not drop datagrams when
the machine is busy (the kernel default, ~208 KiB, overflows under CPU contention)."""


# --------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class CorpusMessage:
    """One corpus message: `raw` is the payload exactly as a sender puts it on the wire."""

    id: str
    raw: bytes
    origin: str
    note: str
    transports: tuple[str, ...] = field(default=TRANSPORTS)


def default_transports(raw: bytes) -> tuple[str, ...]:
    """Where a payload can be sent as exactly one message.

    LF framing would split a message with an LF, would read a leading digit as an octet count
    (and possibly swallow the following messages), and rsyslog splits frames over 8096 bytes.
    """
    if b"\n" in raw or raw[:1].isdigit() or len(raw) > MAX_MESSAGE_BYTES:
        return ("udp", "tcp-octet")
    return TRANSPORTS


def _check_tcp_lf_safe(msg_id: str, raw: bytes) -> None:
    """An explicit "tcp-lf" must not desynchronise the stream for the messages after it."""
    for frame in raw.split(b"\n"):
        if frame[:1].isdigit() or len(frame) > MAX_MESSAGE_BYTES:
            raise ValueError(f"{msg_id}: LF frame {frame[:20]!r} is unsafe for tcp-lf")


def _corpus_message(stem: str, lineno: int, line: str) -> CorpusMessage:
    msg_id = f"{stem}-{lineno}"
    entry = json.loads(line)
    unknown = set(entry) - {"raw", "b64", "note", "transports"}
    if unknown or ("raw" in entry) == ("b64" in entry):
        raise ValueError(f"{msg_id}: expecting exactly one of raw/b64 (+ note, transports)")
    raw = entry["raw"].encode() if "raw" in entry else base64.b64decode(entry["b64"])
    if not raw:
        raise ValueError(f"{msg_id}: an empty payload cannot be framed on every transport")
    transports = tuple(entry.get("transports", default_transports(raw)))
    if not transports or set(transports) - set(TRANSPORTS):
        raise ValueError(f"{msg_id}: transports must be a non-empty subset of {TRANSPORTS}")
    if "tcp-lf" in transports:
        _check_tcp_lf_safe(msg_id, raw)
    return CorpusMessage(msg_id, raw, stem, entry.get("note", ""), transports)


def load_corpus(directory: Path = CORPUS_DIR) -> list[CorpusMessage]:
    """All corpus messages, files in name order, lines in file order (blank lines skipped)."""
    messages = []
    for path in sorted(directory.glob("*.jsonl")):
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    messages.append(_corpus_message(path.stem, lineno, line))
    return messages


# --------------------------------------------------------------------------- sockets


def free_port(host: str = LISTEN_HOST) -> int:
    """A port that is free for both UDP and TCP on `host` (racy, as all such helpers are)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP")


def udp_port_bound(port: int, host: str = LISTEN_HOST) -> bool:
    """True if someone holds the UDP port (our own bind fails with EADDRINUSE)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def tcp_port_accepts(port: int, host: str = LISTEN_HOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_listener(
    port: int,
    *,
    host: str = LISTEN_HOST,
    timeout: float = 10.0,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Poll until `port` is bound for UDP and accepts TCP; fail early if `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before listening")
        if udp_port_bound(port, host) and tcp_port_accepts(port, host):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on UDP+TCP {host}:{port} after {timeout} s")


def frame(transport: str, payload: bytes) -> bytes:
    """The bytes a sender puts on a TCP stream for one message (UDP: the datagram)."""
    if transport == "tcp-lf":
        return payload + b"\n"
    if transport == "tcp-octet":
        return b"%d %s" % (len(payload), payload)
    if transport == "udp":
        return payload
    raise ValueError(f"unknown transport {transport!r}, expecting one of {TRANSPORTS}")


def send(
    transport: str,
    port: int,
    src_ip: str,
    payloads: Iterable[bytes],
    *,
    host: str = LISTEN_HOST,
) -> None:
    """Send `payloads` to host:port from a socket bound to `src_ip`.

    "udp": one datagram each; "tcp-lf": one connection, payload + LF each; "tcp-octet": one
    connection, RFC 6587 octet counting.
    """
    if transport == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((src_ip, 0))
            for payload in payloads:
                s.sendto(payload, (host, port))
                time.sleep(UDP_PAUSE_S)
        return
    data = b"".join(frame(transport, p) for p in payloads)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((src_ip, 0))
        s.connect((host, port))
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        # wait for the server to close: it has then read everything we sent
        s.settimeout(10)
        with contextlib.suppress(OSError):
            while s.recv(4096):
                pass


# --------------------------------------------------------------------------- rsyslogd


def find_rsyslogd() -> str | None:
    """$RSYSLOGD if set (a path; unusable = not installed), else PATH, else /usr/sbin/rsyslogd."""
    candidates = [os.environ["RSYSLOGD"]] if "RSYSLOGD" in os.environ else []
    candidates = candidates or [shutil.which("rsyslogd") or "", "/usr/sbin/rsyslogd"]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def reference_conf(log_dir: Path, port: int, host: str, work_dir: Path) -> str:
    """PLURA's collector config with a larger UDP receive buffer (the ceelog lines are unchanged)."""
    conf = collector_conf(str(log_dir), port=port, address=host, work_dir=str(work_dir))
    udp_input = 'input(type="imudp" '
    assert udp_input in conf, "collector_conf changed: expecting an imudp input"
    return conf.replace(udp_input, f'{udp_input}rcvbufSize="{RSYSLOGD_UDP_RCVBUF}" ')


class RsyslogdProcess:
    """rsyslogd in the foreground with PLURA's collector config, for a `with` block.

    Writes `ceelog-<FROMHOST-IP>.log` into `log_dir`; config, pid file, work directory and
    rsyslogd's own output go into `run_dir` (default: a sibling `<log_dir>.rsyslogd`).
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str],
        port: int,
        *,
        run_dir: str | os.PathLike[str] | None = None,
        host: str = LISTEN_HOST,
        start_timeout: float = 10.0,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.port = port
        self.host = host
        self.run_dir = (
            Path(run_dir) if run_dir else self.log_dir.with_name(self.log_dir.name + ".rsyslogd")
        )
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def output_path(self) -> Path:
        return self.run_dir / "rsyslogd.out"

    def start(self) -> None:
        binary = find_rsyslogd()
        if binary is None:
            raise FileNotFoundError("rsyslogd not installed: apt-get install rsyslog")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        work_dir = self.run_dir / "work"
        work_dir.mkdir(parents=True, exist_ok=True)
        conf = self.run_dir / "rsyslog.conf"
        conf.write_text(reference_conf(self.log_dir, self.port, self.host, work_dir))
        pidfile = self.run_dir / "rsyslogd.pid"
        with self.output_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [binary, "-n", "-f", str(conf), "-i", str(pidfile)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for_listener(self.port, host=self.host, timeout=self.start_timeout, proc=self.proc)
        except BaseException as e:
            self.stop()
            raise RuntimeError(f"rsyslogd did not start: {self.output_path.read_text()}") from e

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_process(self.proc)
        self.proc = None

    def __enter__(self) -> RsyslogdProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM the process we started (by pid), wait, SIGKILL if it does not go."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
    return proc.returncode


# --------------------------------------------------------------------------- ceelog lines

_UNESCAPE = {
    ord('"'): b'"', ord("\\"): b"\\", ord("/"): b"/",
    ord("b"): b"\b", ord("f"): b"\f", ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t",
}  # fmt: skip
_ESCAPE = {0x22: b'\\"', 0x5C: b"\\\\", 0x2F: b"\\/", 0x08: b"\\b", 0x0C: b"\\f",
           0x0A: b"\\n", 0x0D: b"\\r", 0x09: b"\\t"}  # fmt: skip
LINE_PREFIX = b'{"ceelog": {'
LINE_SUFFIX = b"}}\n"


def _read_value(line: bytes, pos: int) -> tuple[bytes, int]:
    """The JSON string whose body starts at `pos`: (unescaped value, offset after its quote)."""
    out = bytearray()
    while True:
        quote = line.find(b'"', pos)
        if quote < 0:
            raise ValueError(f"unterminated string [col {pos}]")
        backslash = line.find(b"\\", pos, quote)
        if backslash < 0:
            out += line[pos:quote]
            return bytes(out), quote + 1
        out += line[pos:backslash]
        esc = line[backslash + 1 : backslash + 2]
        if esc == b"u" and re.fullmatch(rb"[0-9A-Fa-f]{4}", line[backslash + 2 : backslash + 6]):
            code = int(line[backslash + 2 : backslash + 6], 16)
            out += bytes([code]) if code < 0x100 else chr(code).encode()
            pos = backslash + 6
        elif esc and esc[0] in _UNESCAPE:
            out += _UNESCAPE[esc[0]]
            pos = backslash + 2
        else:
            raise ValueError(f"bad escape {line[backslash : backslash + 6]!r} [col {backslash}]")


def parse_ceelog_line(line: bytes) -> dict[str, bytes]:
    """The eleven fields of one ceelog line (with or without its LF), values unescaped."""
    if not line.endswith(b"\n"):
        line += b"\n"
    if not line.startswith(LINE_PREFIX) or not line.endswith(LINE_SUFFIX):
        raise ValueError(f"expecting {LINE_PREFIX!r}...{LINE_SUFFIX!r}: {line[:80]!r}")
    fields: dict[str, bytes] = {}
    pos = len(LINE_PREFIX)
    for i, name in enumerate(CEE_FIELDS):
        key = b'"%s":"' % name.encode()
        sep = b", " if i else b""
        if line[pos : pos + len(sep) + len(key)] != sep + key:
            raise ValueError(f"expecting {sep + key!r} [col {pos}]: {line[pos : pos + 40]!r}")
        fields[name], pos = _read_value(line, pos + len(sep) + len(key))
    if line[pos:] != LINE_SUFFIX:
        raise ValueError(f"expecting {LINE_SUFFIX!r} [col {pos}]: {line[pos:]!r}")
    return fields


def escape_jsonf(value: bytes) -> bytes:
    """rsyslog's jsonf escaping: `"` `\\` `/`, control bytes; >= 0x80 and DEL raw."""
    out = bytearray()
    for b in value:
        if b in _ESCAPE:
            out += _ESCAPE[b]
        elif b < 0x20:
            out += b"\\u%04X" % b
        else:
            out.append(b)
    return bytes(out)


def render_ceelog_line(fields: Mapping[str, bytes]) -> bytes:
    """The line rsyslog writes for these field values (inverse of `parse_ceelog_line`)."""
    body = b", ".join(b'"%s":"%s"' % (n.encode(), escape_jsonf(fields[n])) for n in CEE_FIELDS)
    return LINE_PREFIX + body + LINE_SUFFIX


def read_lines(path: str | os.PathLike[str]) -> list[bytes]:
    """Complete (LF-terminated) lines of a file, LF included; missing file = no lines."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")[:-1]  # the last piece is empty or a line still being written
    return [line + b"\n" for line in lines]


def read_ceelog(path: str | os.PathLike[str]) -> list[dict[str, bytes]]:
    return [parse_ceelog_line(line) for line in read_lines(path)]


def wait_for_lines(path: str | os.PathLike[str], n: int, timeout: float = 10.0) -> list[bytes]:
    """Poll until `path` has at least `n` complete lines; returns them (raises on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = read_lines(path)
        if len(lines) >= n:
            return lines
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{path}: {len(lines)} lines after {timeout} s, expecting {n}")
        time.sleep(0.02)
