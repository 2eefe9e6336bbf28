"""What /proc tells about a server: CPU time, memory, descriptors, UDP drops; the machine."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def cpu_list(text: str) -> set[int]:
    """taskset's CPU list syntax: '1', '0,2', '2-3' -> {1}, {0, 2}, {2, 3}."""
    cpus: set[int] = set()
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()  # fields from 3 (state) on


def process_tree(root: int) -> list[int]:
    """root and all its live descendants."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (fields := _stat_fields(int(name))):
            children.setdefault(int(fields[1]), []).append(int(name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(root: int) -> float:
    """utime+stime of the process tree (all threads), plus its reaped children's (cutime+cstime)."""
    total = 0
    for pid in process_tree(root):
        if fields := _stat_fields(pid):
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / CLOCK_TICKS


def _tree_sum(root: int, measure: Callable[[int], int]) -> int:
    """Sum of measure(pid) over the tree; a process that vanished meanwhile counts 0."""
    total = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += measure(pid)
    return total


def rss_bytes(root: int) -> int:
    """Resident set size summed over the tree (shared pages of forked workers count twice)."""
    return _tree_sum(
        root, lambda pid: int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_BYTES
    )


def peak_rss_bytes(root: int) -> int:
    """VmHWM (the highest resident set size so far) summed over the tree."""

    def hwm(pid: int) -> int:
        status = Path(f"/proc/{pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]

    return _tree_sum(root, hwm)


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg gives them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def fd_count(root: int) -> int:
    return _tree_sum(root, lambda pid: len(os.listdir(f"/proc/{pid}/fd")))


def thread_count(root: int) -> int:
    return _tree_sum(root, lambda pid: len(os.listdir(f"/proc/{pid}/task")))


def udp_socket_drops(port: int) -> int | None:
    """Sum of /proc/net/udp `drops` of the sockets bound to `port` (None: no such socket)."""
    found, total = False, 0
    with open("/proc/net/udp") as fh:
        next(fh)
        for line in fh:
            parts = line.split()
            if int(parts[1].rsplit(":", 1)[1], 16) == port:
                found, total = True, total + int(parts[-1])
    return total if found else None


def udp_rcvbuf_errors() -> int:
    """The system-wide UDP RcvbufErrors counter of /proc/net/snmp."""
    with open("/proc/net/snmp") as fh:
        rows = [line.split() for line in fh if line.startswith("Udp:")]
    return int(dict(zip(rows[0][1:], rows[1][1:], strict=True))["RcvbufErrors"])


def listening(port: int) -> tuple[bool, bool]:
    """(a UDP socket is bound to port, a TCP socket listens on it) on any IPv4 address."""
    result = []
    for table, state in (("/proc/net/udp", None), ("/proc/net/tcp", "0A")):
        ok = False
        with open(table) as fh:
            next(fh)
            for line in fh:
                parts = line.split()
                if int(parts[1].rsplit(":", 1)[1], 16) == port and state in (None, parts[3]):
                    ok = True
                    break
        result.append(ok)
    return result[0], result[1]


def machine() -> dict[str, str]:
    """The description printed at the top of the results."""
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))  # type: ignore[union-attr]
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "rsyslog": rsyslog_version(),
        "sysctl": " ".join(f"{k}={_sysctl(k)}" for k in SYSCTLS),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


SYSCTLS = ("net.core.rmem_default", "net.core.rmem_max", "net.core.netdev_max_backlog")


def _sysctl(name: str) -> str:
    try:
        return Path("/proc/sys/" + name.replace(".", "/")).read_text().strip()
    except OSError:
        return "?"


def rsyslog_version() -> str:
    try:
        out = subprocess.run(["rsyslogd", "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    first = out.stdout.splitlines()[0] if out.stdout else ""
    match = re.search(r"rsyslogd\s+(\S+)", first)
    return match.group(1) if match else "unknown"
