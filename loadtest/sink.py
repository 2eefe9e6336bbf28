"""The upstream sink of the relay load test: builds, starts, asks and stops `sink.c`.

The sink is the collector a relaying server forwards to: it accepts TCP on a free 127.0.0.1
port, reads octet-counted (or LF) frames and counts and checks them in C (see sink.c). The
driver polls `counts()` to tell when every message has been forwarded, reads the per-stream
`dump()` at the end of a step, and checks the sampled frames byte by byte (`check_sample`).
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
from pathlib import Path
from typing import Any

from loadtest.gen import APP, HOSTNAME, PAD, PRI, build_c

HERE = Path(__file__).resolve().parent
SINK_SOURCE = HERE / "sink.c"
REPLY_TIMEOUT_S = 10.0

# what both relays must send for a loadgen RFC 3164 message: the header as received, the stamp
# after the tag's `:` (and MSG's own leading space after the stamp), the body intact
FORWARDED = re.compile(
    rb"<%d>(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ 123]\d \d\d:\d\d:\d\d " % PRI
    + re.escape(f"{HOSTNAME} {APP}[".encode())
    + rb"(\d+)\]: \[origip=([0-9.]+)\] seq=(\d{8}) src=(\d+) ip=([0-9.]+) run=(\S+) (.*)\$\Z"
)


def build_sink(bin_dir: Path) -> Path:
    return build_c(SINK_SOURCE, bin_dir)


class Sink:
    """One running sink process; talk to it with counts() and dump()."""

    def __init__(
        self, exe: Path, work_dir: Path, *, cpu: str | None, framing: str = "octet",
        sample_every: int = 1000, max_time_s: float = 900,
    ) -> None:  # fmt: skip
        self.sample_path = work_dir / "sink-sample.txt"
        argv = [str(exe), "--framing", framing, "--sample", str(self.sample_path)]
        argv += ["--sample-every", str(sample_every), "--max-time", str(max_time_s)]
        if cpu is not None:
            argv = ["taskset", "-c", cpu, *argv]
        work_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            bufsize=0,
        )  # fmt: skip
        self._pending = b""
        self.port = int(self._reply()["port"])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _reply(self) -> dict[str, Any]:
        """The next JSON line the sink writes (bounded wait: a hung sink is an error)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._pending:
            ready, _, _ = select.select([fd], [], [], REPLY_TIMEOUT_S)
            chunk = os.read(fd, 1 << 20) if ready else b""
            if not chunk:
                raise RuntimeError(f"the sink did not answer (exit status {self.proc.poll()})")
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def _ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        return self._reply()

    def counts(self) -> dict[str, Any]:
        """frames, bytes, first_ns, last_ns, conns, the error counters, cpu_s."""
        return self._ask("count")

    def dump(self) -> dict[str, Any]:
        """counts() plus per-stream counts ("streams"); flushes the sample file."""
        return self._ask("dump")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()  # the sink exits at EOF on its stdin
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def check_sample(path: Path, run: str) -> dict[str, Any]:
    """Checks every sampled frame of `run` against FORWARDED: the stamp's address must be the
    message's ip= (the sender's), the tag's PID loadgen's 100 + src, the padding intact."""
    checked, failed, examples = 0, 0, list[str]()
    padding = PAD * 64
    try:
        lines = path.read_bytes().splitlines()
    except OSError:
        lines = []
    for line in lines:
        if b" run=%s " % run.encode() not in line:
            continue
        checked += 1
        m = FORWARDED.match(line)
        ok = (
            m is not None and m[2] == m[5] and int(m[1]) == 100 + int(m[4])
            and padding.startswith(m[7].decode(errors="replace"))
        )  # fmt: skip
        if not ok:
            failed += 1
            if len(examples) < 3:
                examples.append(line[:300].decode(errors="replace"))
    return {"sample_checked": checked, "sample_failed": failed, "sample_examples": examples}
