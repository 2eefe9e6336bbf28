"""The load generator: the message shape, the C generator (built with gcc at run time), probes.

`loadgen.c` does the heavy sending (UDP paced with GSO or sendmmsg, TCP over K connections);
this module builds and runs it, and sends the few messages that Python can send itself: the
readiness probes and the one-message-per-address load from thousands of source addresses.
Every message carries `seq=NNNNNNNN src=I ip=A run=TAG` and is padded with `PAD` to a fixed
size, ending in `$`, so the verifier can count and check it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LOADGEN_SOURCE = HERE / "loadgen.c"

PRI = 30  # daemon.info
HOSTNAME = "web-7f9c"
APP = "nginx"
PAD = '"GET /index.html?q=a\\b HTTP/1.1" 200 5123 "-" "Mozilla/5.0 (X11; Linux x86_64)" '
SEQ_DIGITS = 8
FIRST_SOURCE = "127.0.0.2"  # 127.0.0.1 is the server's own address (and the probes')
MANY_SOURCES_BASE = "127.1.0.1"


@dataclass(frozen=True)
class Load:
    """One invocation of the C generator."""

    proto: str  # "udp" | "tcp"
    port: int
    run: str  # tag written into every message
    host: str = "127.0.0.1"
    rate: int = 0  # udp msgs/s; 0 = as fast as possible (needs count)
    duration_s: float = 0.0
    count: int = 0  # tcp: total messages; udp: cap
    conns: int = 4
    sources: int = 16
    src_base: str = FIRST_SOURCE
    framing: str = "lf"  # tcp: "lf" | "octet"
    fmt: int = 3164  # 3164 | 5424
    size: int = 200
    gso: str = "auto"  # "auto" | "on" | "off"
    max_time_s: float = 0.0
    extra: tuple[str, ...] = field(default_factory=tuple)

    def argv(self, exe: Path) -> list[str]:
        check_loopback(self.host)
        check_loopback(self.src_base)
        args = [str(exe), "--proto", self.proto, "--host", self.host, "--port", str(self.port)]
        args += ["--run", self.run, "--sources", str(self.sources), "--src-base", self.src_base]
        args += ["--format", str(self.fmt), "--size", str(self.size), "--pad", PAD]
        args += ["--pri", str(PRI), "--hostname", HOSTNAME, "--app", APP]
        if self.proto == "udp":
            args += ["--rate", str(self.rate), "--duration", str(self.duration_s)]
            args += ["--gso", self.gso]
        else:
            args += ["--conns", str(self.conns), "--framing", self.framing]
        if self.count:
            args += ["--count", str(self.count)]
        if self.max_time_s:
            args += ["--max-time", str(self.max_time_s)]
        return args + list(self.extra)


def check_loopback(address: str) -> None:
    if ipaddress.ip_address(address) not in ipaddress.ip_network("127.0.0.0/8"):
        raise ValueError(f"expecting an address in 127.0.0.0/8, got {address}")


def build_loadgen(bin_dir: Path) -> Path:
    """Compile loadgen.c with gcc into bin_dir (once per source version); return the binary."""
    return build_c(LOADGEN_SOURCE, bin_dir)


def build_c(source_path: Path, bin_dir: Path) -> Path:
    """Compile one of loadtest's C programs (`gcc -O2 -Wall -pthread`) into bin_dir as
    `<stem>-<digest>`, once per source version; return the binary."""
    source = source_path.read_bytes()
    exe = bin_dir / f"{source_path.stem}-{hashlib.sha256(source).hexdigest()[:12]}"
    if exe.exists():
        return exe
    if shutil.which("gcc") is None:
        raise RuntimeError(f"gcc is needed to build {source_path}")
    bin_dir.mkdir(parents=True, exist_ok=True)
    tmp = exe.with_suffix(".tmp")
    cmd = ["gcc", "-O2", "-Wall", "-pthread", "-o", str(tmp), str(source_path)]
    subprocess.run(cmd, check=True)
    tmp.rename(exe)
    return exe


def run_load(
    exe: Path, load: Load, *, cpu: str | None = None, timeout_s: float = 600
) -> dict[str, Any]:
    """Run the generator to completion (pinned to `cpu` if given); its JSON summary."""
    argv = load.argv(exe)
    if cpu is not None:
        argv = ["taskset", "-c", cpu, *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode not in (0, 1) or not done.stdout.strip():
        raise RuntimeError(f"loadgen exited {done.returncode}: {done.stderr.strip()[:500]}")
    summary: dict[str, Any] = json.loads(done.stdout)
    summary["stderr"] = done.stderr.strip()[:500]
    return summary


# ---------------------------------------------------------------- Python-side messages


def message(seq: int, src: int, ip: str, run: str, *, fmt: int = 3164, size: int = 200) -> bytes:
    """The shape loadgen.c sends (timestamps in local time), for probes and many sources."""
    now = time.time()
    if fmt == 3164:
        stamp = time.strftime("%b %e %H:%M:%S", time.localtime(now))
        head = f"<{PRI}>{stamp} {HOSTNAME} {APP}[{100 + src}]: "
    else:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now))
        offset = time.strftime("%z", time.localtime(now))
        micros = int(now % 1 * 1e6)
        stamp += f".{micros:06d}{offset[:3]}:{offset[3:]}"
        head = f"<{PRI}>1 {stamp} {HOSTNAME} {APP} {100 + src} - - "
    text = f"{head}seq={seq:0{SEQ_DIGITS}d} src={src} ip={ip} run={run} "
    fill = max(0, size - 1 - len(text))
    text += (PAD * (fill // len(PAD) + 1))[:fill] + "$"
    return text.encode()


def send_probe(port: int, proto: str, seq: int, *, host: str = "127.0.0.1") -> None:
    """One `run=probe` message from 127.0.0.1 (file ceelog-127.0.0.1.log) over udp or tcp."""
    check_loopback(host)
    data = message(seq, 0, "127.0.0.1", "probe")
    if proto == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.sendto(data, (host, port))
        return
    with socket.create_connection((host, port), timeout=2) as s:
        s.sendall(data + b"\n")


def many_source_ip(i: int) -> str:
    """Address number i of the many-sources load: 127.1.0.1 .. 127.1.39.250 for 10,000."""
    base = int(ipaddress.ip_address(MANY_SOURCES_BASE))
    return str(ipaddress.ip_address(base + (i // 250) * 256 + i % 250))


def send_many_sources(
    port: int, run: str, *, sources: int, per_source: int, rate: int = 10_000,
    size: int = 200, host: str = "127.0.0.1", max_time_s: float = 120,
) -> dict[str, Any]:  # fmt: skip
    """UDP: `per_source` messages from each of `sources` distinct addresses, at about `rate`.

    One socket per address, bound, used and closed in turn (so the generator never holds
    thousands of descriptors); returns a summary shaped like loadgen's.
    """
    check_loopback(host)
    streams, errors, sent = [], 0, 0
    t0 = time.monotonic()
    first_ns = time.time_ns()
    for i in range(sources):
        if time.monotonic() - t0 > max_time_s:
            break
        ip = many_source_ip(i)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((ip, 0))
            ok = 0
            for seq in range(per_source):
                try:
                    s.sendto(message(seq, i, ip, run, size=size), (host, port))
                    ok += 1
                except OSError:
                    errors += 1
        sent += ok
        streams.append(
            {"src": i, "ip": ip, "seqs": per_source, "sent": ok, "errors": per_source - ok}
        )
        ahead = sent / rate - (time.monotonic() - t0)  # pace: the server must not drop
        if ahead > 0.005:
            time.sleep(ahead)
    elapsed = time.monotonic() - t0
    return {
        "proto": "udp", "framing": "datagram", "format": 3164, "run": run, "rate": rate,
        "planned": sources * per_source, "sent": sent, "errors": errors, "size": size,
        "gso": False, "elapsed_s": elapsed, "achieved_rate": sent / elapsed if elapsed else 0,
        "first_send_ns": first_ns, "last_send_ns": time.time_ns(), "streams": streams,
    }  # fmt: skip
