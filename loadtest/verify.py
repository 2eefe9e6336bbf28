"""The verifier: reads ceelog-<ip>.log files, counts every numbered message, checks every line.

Counts per stream (run tag, src id): received (distinct seqs), missing (sent but never
written), duplicated, reordered (a seq lower than one already written), and per run the
lines failing each check:

  not_json    the line does not decode as JSON
  layout      not byte-for-byte rsyslog's CEETemplate layout: `{"ceelog": {"k":"v", ...}}`
              with the eleven keys in template order, ", " between them
  schema      not one object `ceelog` of eleven string values, or timegenerated is not
              RFC 3339 with microseconds and an offset
  header      programname/hostname/syslogtag/pri... are not what the generator sent
              (rsyslog's values: tag `nginx[PID]:` and msg with its leading space for
              RFC 3164, tag `nginx[PID]` and no space for RFC 5424)
  body        msg is not `seq=... src=... ip=... run=... ` + the padding + `$` (truncated,
              merged or corrupted), or carries several seq= tokens (framing errors)
  ip          the ip= of the message differs from the file name's
  untagged    no seq= token at all (not one of ours)
Lines need not be UTF-8 (they are decoded with surrogateescape and counted as non_utf8).

Scanning is incremental: `scan()` reads only what was appended since the last call, so the
driver verifies each step right after it and `LineCounter` watches progress cheaply.
"""

from __future__ import annotations

import json
import operator
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.gen import APP, HOSTNAME, PAD, PRI

try:  # msgspec (a plura-relay dependency) decodes about 3x faster than json
    from msgspec.json import decode as _decode_bytes  # raises msgspec.DecodeError(ValueError)
except ImportError:  # pragma: no cover - json is enough, just slower
    _decode_bytes = json.loads  # type: ignore[assignment]

KEYS = (
    "timegenerated", "programname", "hostname", "syslogtag", "pri", "pri-text",
    "syslogfacility", "syslogfacility-text", "syslogseverity", "syslogseverity-text", "msg",
)  # fmt: skip
CHECKS = ("not_json", "layout", "schema", "header", "body", "ip", "untagged")
_JSON_STR = rb'"[^"\\]*(?:\\.[^"\\]*)*"'
LAYOUT = re.compile(
    rb'\{"ceelog": \{'
    + b", ".join(b'"' + re.escape(k.encode()) + b'":' + _JSON_STR for k in KEYS)
    + rb"\}\}"
)
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(?:Z|[+-]\d\d:\d\d)\Z")
TOKENS = re.compile(r"( ?)seq=(\d{8}) src=(\d+) ip=(\S+) run=(\S+) ")
TAG = re.compile(re.escape(APP) + r"\[(\d+)\](:?)\Z")
PADDING = PAD * (65536 // len(PAD) + 1)
EXPECTED_HEADER = {
    "programname": APP, "hostname": HOSTNAME, "pri": str(PRI), "pri-text": "daemon.info",
    "syslogfacility": "3", "syslogfacility-text": "daemon", "syslogseverity": "6",
    "syslogseverity-text": "info",
}  # fmt: skip
HEADER_KEYS = (*EXPECTED_HEADER, "syslogtag")
MAX_EXAMPLES = 3


@dataclass
class Stream:
    """One numbered sequence: counts[seq] = times written (saturating at 255)."""

    ip: str = ""
    counts: bytearray = field(default_factory=bytearray)
    highest: int = -1
    reordered: int = 0

    def add(self, seq: int) -> None:
        if seq >= len(self.counts):
            self.counts.extend(bytes(max(seq + 1 - len(self.counts), len(self.counts), 1024)))
        if self.counts[seq] < 255:
            self.counts[seq] += 1
        if seq < self.highest:
            self.reordered += 1
        else:
            self.highest = seq

    def tally(self, sent: int | None) -> dict[str, int]:
        n = self.highest + 1 if sent is None else sent
        seen = bytes(self.counts[:n]).ljust(n, b"\0")
        received = n - seen.count(0)
        return {
            "sent": n, "received": received, "missing": n - received,
            "duplicated": sum(c - 1 for c in seen if c > 1), "reordered": self.reordered,
            "unexpected": sum(1 for c in self.counts[n:] if c),  # seqs never sent
        }  # fmt: skip


@dataclass
class RunStats:
    lines: int = 0
    non_utf8: int = 0
    failed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHECKS, 0))
    examples: list[str] = field(default_factory=list)
    streams: dict[int, Stream] = field(default_factory=dict)


class Verifier:
    """Incremental reader and checker of one output directory."""

    def __init__(self, directory: Path, formats: dict[str, int] | None = None) -> None:
        self.directory = Path(directory)
        self.formats = formats if formats is not None else {}  # run -> 3164 | 5424
        self.offsets: dict[str, int] = {}
        self.runs: dict[str, RunStats] = {}
        self.files = 0

    def scan(self) -> int:
        """Read and check every complete line appended since the last scan; lines read."""
        total = 0
        for entry in os.scandir(self.directory):
            name = entry.name
            if not (name.startswith("ceelog-") and name.endswith(".log")):
                continue
            offset = self.offsets.get(name, 0)
            if name not in self.offsets:
                self.files += 1
            if entry.stat().st_size <= offset:
                self.offsets[name] = offset
                continue
            with open(entry.path, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
            end = data.rfind(b"\n") + 1  # a partial last line waits for the next scan
            self.offsets[name] = offset + end
            ip = name[len("ceelog-") : -len(".log")]
            for raw in data[:end].split(b"\n")[:-1]:
                self.check_line(raw, ip)
            total += data.count(b"\n", 0, end)
        return total

    def check_line(self, raw: bytes, file_ip: str) -> None:
        fields, non_utf8 = decode_line(raw)
        msg = fields.get("msg", "") if fields else raw.decode("utf-8", "surrogateescape")
        match = TOKENS.search(msg) if isinstance(msg, str) else None
        run = match.group(5) if match else "(untagged)"
        stats = self.runs.get(run)
        if stats is None:
            stats = self.runs[run] = RunStats()
        stats.lines += 1
        stats.non_utf8 += non_utf8
        failed = line_failures(raw, fields, match, file_ip, self.formats.get(run))
        for check in failed:
            stats.failed[check] += 1
        if failed and len(stats.examples) < MAX_EXAMPLES:
            shown = raw[:400].decode("utf-8", "backslashreplace")
            stats.examples.append(f"{','.join(failed)} [ceelog-{file_ip}.log] {shown}")
        if match:
            src = int(match.group(3))
            stream = stats.streams.get(src)
            if stream is None:
                stream = stats.streams[src] = Stream(ip=match.group(4))
            stream.add(int(match.group(2)))

    def summary(
        self, sent: dict[str, dict[int, int]] | None = None, only: list[str] | None = None
    ) -> dict[str, Any]:
        """Per run: totals, failed checks, examples, per-source tallies (sent: run -> src -> n)."""
        sent = sent or {}
        out: dict[str, Any] = {}
        for run in only if only is not None else sorted(set(self.runs) | set(sent)):
            stats = self.runs.get(run, RunStats())
            per_run_sent = sent.get(run, {})
            sources: dict[int, dict[str, Any]] = {}
            for src in sorted(set(stats.streams) | set(per_run_sent)):
                stream = stats.streams.get(src, Stream())
                sources[src] = {"ip": stream.ip, **stream.tally(per_run_sent.get(src))}
            totals = {k: sum(s[k] for s in sources.values()) for k in Stream().tally(0)}
            out[run] = {
                "lines": stats.lines, "non_utf8": stats.non_utf8, **totals,
                "bad_lines": stats.failed, "examples": stats.examples, "sources": sources,
            }  # fmt: skip
        return out


def decode_line(raw: bytes) -> tuple[dict[str, Any] | None, int]:
    """(the ceelog object, {} if the JSON is not one, None if no JSON; 1 if it was not UTF-8)."""
    non_utf8 = 0
    try:
        obj = _decode_bytes(raw)
    except ValueError:  # not JSON, or not UTF-8 (UnicodeDecodeError): try again leniently
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text, non_utf8 = raw.decode("utf-8", "surrogateescape"), 1
        try:
            obj = json.loads(text)
        except ValueError:
            return None, non_utf8
    inner = obj.get("ceelog") if isinstance(obj, dict) and len(obj) == 1 else None
    return (inner if isinstance(inner, dict) else {}), non_utf8


def line_failures(
    raw: bytes, fields: dict[str, Any] | None, match: re.Match[str] | None, file_ip: str,
    fmt: int | None,
) -> list[str]:  # fmt: skip
    if fields is None:
        return ["not_json"] + ([] if match else ["untagged"])
    failed = []
    if LAYOUT.fullmatch(raw):  # the layout implies the keys, their order and string values
        schema_ok = bool(TIMESTAMP.match(fields["timegenerated"]))
    else:
        failed.append("layout")
        schema_ok = tuple(fields) == KEYS and all(type(v) is str for v in fields.values())
        schema_ok = schema_ok and bool(TIMESTAMP.match(fields["timegenerated"]))
    if not schema_ok:
        failed.append("schema")
    if match is None:
        return [*failed, "untagged"]
    if not header_ok(fields, int(match.group(3)), match.group(1), fmt):
        failed.append("header")
    if not body_ok(fields.get("msg", ""), match):
        failed.append("body")
    if match.group(4) != file_ip:
        failed.append("ip")
    return failed


_header_values = operator.itemgetter(*HEADER_KEYS)
_header_cache: dict[tuple[Any, ...], bool] = {}


def header_ok(fields: dict[str, Any], src: int, lead: str, fmt: int | None) -> bool:
    """Header fields as rsyslog gives them for the generator's messages (memoized)."""
    try:
        key = (_header_values(fields), src, lead, fmt)
    except KeyError:
        return False
    ok = _header_cache.get(key)
    if ok is None:
        if len(_header_cache) > 100_000:  # garbage headers must not grow it without bound
            _header_cache.clear()
        ok = _header_cache[key] = _check_header(fields, src, lead, fmt)
    return ok


def _check_header(fields: dict[str, Any], src: int, lead: str, fmt: int | None) -> bool:
    if any(fields.get(k) != v for k, v in EXPECTED_HEADER.items()):
        return False
    tag = TAG.match(fields.get("syslogtag") or "")
    if tag is None or int(tag.group(1)) != 100 + src:
        return False
    # rsyslog: RFC 3164 keeps the colon in the tag and the space before msg; 5424 has neither
    shape = 3164 if tag.group(2) else 5424
    return shape == (fmt or shape) and lead == (" " if shape == 3164 else "")


def body_ok(msg: str, match: re.Match[str]) -> bool:
    if match.start() != 0 or msg.count("seq=") != 1 or not msg.endswith("$"):
        return False
    tail = msg[match.end() : -1]
    return PADDING.startswith(tail)


# ---------------------------------------------------------------- progress and CLI


class LineCounter:
    """Counts newlines appended to ceelog-*.log files (cheap; for end-of-step detection)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.sizes: dict[str, int] = {}
        self.lines = 0
        self.newest_mtime_ns = 0

    def poll(self) -> int:
        for entry in os.scandir(self.directory):
            if not (entry.name.startswith("ceelog-") and entry.name.endswith(".log")):
                continue
            st = entry.stat()
            old = self.sizes.get(entry.name, 0)
            if st.st_size > old:
                with open(entry.path, "rb") as fh:
                    fh.seek(old)
                    self.lines += fh.read(st.st_size - old).count(b"\n")
                self.sizes[entry.name] = st.st_size
                self.newest_mtime_ns = max(self.newest_mtime_ns, st.st_mtime_ns)
        return self.lines


def load_sent(path: Path) -> tuple[dict[str, dict[int, int]], dict[str, int]]:
    """From a JSONL of generator summaries: (run -> src -> seqs sent, run -> format)."""
    sent: dict[str, dict[int, int]] = {}
    formats: dict[str, int] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            summary = json.loads(line)
            per = sent.setdefault(summary["run"], {})
            formats[summary["run"]] = int(summary.get("format", 3164))
            for s in summary["streams"]:
                per[int(s["src"])] = per.get(int(s["src"]), 0) + int(s["seqs"])
    return sent, formats


def format_summary(summary: dict[str, Any], *, per_source: bool = False) -> str:
    head = f"{'run':<14} {'lines':>9} {'sent':>9} {'received':>9} {'missing':>8} {'dup':>6}"
    head += f" {'reord':>7} {'bad':>6}  failed checks"
    rows = [head]
    for run, r in summary.items():
        bad = {k: v for k, v in r["bad_lines"].items() if v}
        notes = [f"{k}={v}" for k, v in bad.items()]
        notes += [f"(non_utf8={r['non_utf8']})"] if r["non_utf8"] else []
        rows.append(
            f"{run:<14} {r['lines']:>9} {r['sent']:>9} {r['received']:>9} {r['missing']:>8} "
            f"{r['duplicated']:>6} {r['reordered']:>7} {sum(bad.values()):>6}  "
            + (" ".join(notes) or "-")
        )
        if per_source:
            for src, s in r["sources"].items():
                rows.append(
                    f"  src {src:<5} {s['ip']:<15} sent={s['sent']} received={s['received']} "
                    f"missing={s['missing']} dup={s['duplicated']} reord={s['reordered']}"
                )
        rows += [f"  bad: {e}" for e in r["examples"]]
    return "\n".join(rows)


def verify_dir(
    directory: Path, sent_path: Path | None = None, *, per_source: bool = False,
    json_path: Path | None = None,
) -> int:  # fmt: skip
    """`python -m loadtest verify DIR`: exit 1 if no line, 2 if a line failed a check."""
    sent, formats = load_sent(sent_path) if sent_path else ({}, {})
    verifier = Verifier(directory, formats)
    lines = verifier.scan()
    summary = verifier.summary(sent)
    print(f"{verifier.files} files, {lines} lines in {directory}")
    print(format_summary(summary, per_source=per_source))
    if json_path:
        Path(json_path).write_text(json.dumps(summary, indent=1, default=str))
    if lines == 0:
        return 1
    return 2 if any(sum(r["bad_lines"].values()) for r in summary.values()) else 0
