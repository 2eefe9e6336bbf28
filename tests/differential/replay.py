"""Replaying the corpus to a syslog server and attributing its ceelog lines to corpus messages.

Each origin file is sent from its own loopback address (so it lands in its own
`ceelog-<ip>.log`), and every corpus message is followed by a *marker* message: the lines a
server writes between two markers are that message's records. A message may give zero, one or
several records (LF framing splits at every LF), and attributing them this way keeps one
divergence from shifting every later comparison.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.rsyslogd import (
    CEE_FIELDS,
    LISTEN_HOST,
    CorpusMessage,
    parse_ceelog_line,
    read_lines,
    send,
    stop_process,
    wait_for_listener,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
MARKER_HOSTNAME = b"corpus-marker"
MARKER_TAG = b"end:"
TIMEGENERATED_RE = re.compile(rb"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}[+-]\d{2}:\d{2}")
COMPARED_FIELDS = tuple(name for name in CEE_FIELDS if name != "timegenerated")


def marker(msg_id: str) -> bytes:
    """The message sent after corpus message `msg_id`: parses the same way everywhere."""
    return b"<14>Jan  5 10:11:12 %s %s %s" % (MARKER_HOSTNAME, MARKER_TAG, msg_id.encode())


@dataclass(frozen=True)
class Stream:
    """The messages one source address sends on one connection (TCP) or socket (UDP)."""

    src_ip: str
    messages: tuple[CorpusMessage, ...]

    def payloads(self) -> list[bytes]:
        return [p for m in self.messages for p in (m.raw, marker(m.id))]

    @property
    def last_marker(self) -> str | None:
        return self.messages[-1].id if self.messages else None


def origin_sources(corpus: Iterable[CorpusMessage]) -> dict[str, str]:
    """origin -> source address: 127.0.0.2, 127.0.0.3, ... in origin name order."""
    origins = sorted({m.origin for m in corpus})
    return {origin: f"127.0.0.{i}" for i, origin in enumerate(origins, start=2)}


def plan(corpus: Sequence[CorpusMessage], transport: str) -> list[Stream]:
    """One stream per origin, each from its own source address."""
    sources = origin_sources(corpus)
    streams = []
    for origin, src_ip in sources.items():
        messages = tuple(m for m in corpus if m.origin == origin and transport in m.transports)
        if messages:
            streams.append(Stream(src_ip, messages))
    return streams


def send_streams(transport: str, port: int, streams: Iterable[Stream]) -> None:
    for stream in streams:
        send(transport, port, stream.src_ip, stream.payloads())


def log_path(log_dir: Path, src_ip: str) -> Path:
    return log_dir / f"ceelog-{src_ip}.log"


def marker_id(line: bytes) -> str | None:
    """The corpus id if `line` is a marker's record."""
    if MARKER_HOSTNAME not in line:
        return None
    try:
        fields = parse_ceelog_line(line)
    except ValueError:
        return None
    if fields["hostname"] == MARKER_HOSTNAME and fields["syslogtag"] == MARKER_TAG:
        return fields["msg"].lstrip(b" ").decode(errors="replace")
    return None


def wait_for_markers(log_dir: Path, streams: Iterable[Stream], timeout: float) -> list[str]:
    """Poll until every stream's last marker is written; returns the sources still missing."""
    pending = {s.src_ip: s.last_marker for s in streams if s.last_marker}
    deadline = time.monotonic() + timeout
    while pending:
        for src_ip, last in list(pending.items()):
            lines = read_lines(log_path(log_dir, src_ip))
            if lines and any(marker_id(line) == last for line in lines[-3:]):
                del pending[src_ip]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return sorted(pending)


def group_by_marker(lines: Iterable[bytes]) -> dict[str, list[bytes]]:
    """corpus id -> the lines written before its marker (and after the previous one)."""
    groups: dict[str, list[bytes]] = {}
    current: list[bytes] = []
    for line in lines:
        msg_id = marker_id(line)
        if msg_id is None:
            current.append(line)
        else:
            groups[msg_id] = current
            current = []
    return groups


@dataclass
class ServerOutput:
    """What one server wrote for one transport: corpus id -> that message's lines."""

    name: str
    groups: dict[str, list[bytes]] = field(default_factory=dict)
    missing_sources: list[str] = field(default_factory=list)
    error: str = ""


def collect(name: str, log_dir: Path, streams: Sequence[Stream], timeout: float) -> ServerOutput:
    output = ServerOutput(name, missing_sources=wait_for_markers(log_dir, streams, timeout))
    for stream in streams:
        output.groups.update(group_by_marker(read_lines(log_path(log_dir, stream.src_ip))))
    return output


# --------------------------------------------------------------------------- comparing


def _short(value: bytes, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(value)} bytes)"


def compare_records(expected: bytes, actual: bytes) -> list[str]:
    """Field differences between rsyslog's line and plura-relay's (timegenerated: format only)."""
    try:
        want = parse_ceelog_line(expected)
    except ValueError as e:
        return [f"rsyslog line unparsable ({e}): {_short(expected)}"]
    try:
        got = parse_ceelog_line(actual)
    except ValueError as e:
        return [f"plura-relay line is not a ceelog line ({e}): {_short(actual)}"]
    problems = [
        f"{name}: rsyslog {_short(want[name])} != plura-relay {_short(got[name])}"
        for name in COMPARED_FIELDS
        if want[name] != got[name]
    ]
    if not TIMEGENERATED_RE.fullmatch(got["timegenerated"]):
        problems.append(f"timegenerated: bad format {got['timegenerated']!r}")
    return problems


def compare_message(
    message: CorpusMessage, expected: list[bytes] | None, actual: list[bytes] | None
) -> list[str]:
    """Everything that differs for one corpus message; empty if plura-relay matched rsyslog."""
    if expected is None:
        return ["rsyslog's marker for this message is missing (reference run incomplete)"]
    if actual is None:
        return ["plura-relay's marker for this message is missing (nothing attributable)"]
    problems = []
    if len(expected) != len(actual):
        problems.append(f"record count: rsyslog {len(expected)} != plura-relay {len(actual)}")
    for i, (want, got) in enumerate(zip(expected, actual, strict=False), start=1):
        problems += [f"record {i}: {p}" for p in compare_records(want, got)]
    return problems


def describe(message: CorpusMessage, transport: str, problems: list[str]) -> str:
    head = f"{message.id} [{transport}] raw={_short(message.raw, 300)} ({message.note})"
    return "\n".join([head, *(f"    {p}" for p in problems)])


def record_mismatch(message: CorpusMessage, transport: str, problems: list[str]) -> None:
    """Append to $DIFFERENTIAL_REPORT (JSON lines) when set: a summary for the parser author."""
    path = os.environ.get("DIFFERENTIAL_REPORT")
    if not path:
        return
    entry = {
        "id": message.id,
        "transport": transport,
        "raw": message.raw.decode("utf-8", "backslashreplace"),
        "problems": problems,
    }
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------- plura-relay


def relay_available() -> bool:
    return (REPO_ROOT / "relay" / "__main__.py").exists()


class RelayProcess:
    """`python -m relay serve` on 127.0.0.1:`port`, for a `with` block."""

    def __init__(
        self, log_dir: Path, port: int, *, workers: int | None = None, config: str | None = None
    ) -> None:
        """`config`: TOML text written beside `log_dir` and passed with `--config`."""
        self.log_dir = log_dir
        self.port = port
        self.workers = workers
        self.config = config
        self.config_path = log_dir.with_name(log_dir.name + ".toml")
        self.output_path = log_dir.with_name(log_dir.name + ".out")
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "relay", "serve", "--listen", f"{LISTEN_HOST}:{self.port}"]
        cmd += ["--log-dir", str(self.log_dir), "--state-dir", str(self.log_dir / ".state")]
        if self.workers is not None:
            cmd += ["--workers", str(self.workers)]
        if self.config is not None:
            cmd += ["--config", str(self.config_path)]
        return cmd

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.config is not None:
            self.config_path.write_text(self.config)
        pythonpath = [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, pythonpath)))
        with self.output_path.open("wb") as out:
            self.proc = subprocess.Popen(
                self.command(), cwd=REPO_ROOT, env=env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            wait_for_listener(self.port, timeout=15.0, proc=self.proc)
        except BaseException as e:
            self.stop()
            raise RuntimeError(
                f"plura-relay did not start ({' '.join(self.command())}):\n"
                f"{self.output_path.read_text(errors='replace')}"
            ) from e

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def __enter__(self) -> RelayProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
