"""How to start, probe and stop each server under test: rsyslogd (PLURA's config) and plura-relay.

A server runs in the foreground, pinned with taskset, in its own directory:
`logs/` (the ceelog files), `work/` (config, pid file, state, its stdout+stderr in server.log).
It is ready when its UDP and TCP ports are bound and one probe over each has landed on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from loadtest import procfs
from loadtest.gen import send_probe

REPO = Path(__file__).resolve().parent.parent
KINDS = ("rsyslog", "plura-relay")
STOP_TIMEOUT_S = 15.0
LOAD_CONFIG = """\
# written by loadtest/servers.py: defaults, but every new source admitted at once
[children]
max_new_per_second = 1000000
new_sources_burst = 1000000
max_children = 100000
"""


@dataclass(frozen=True)
class ServerSpec:
    name: str  # shown in the results, e.g. "plura-relay --workers 2"
    kind: str  # one of KINDS
    args: tuple[str, ...] = ()  # extra command-line arguments (plura-relay)
    tree: str = ""  # plura-relay from another checkout (a before/after in one run); "" = this one

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() or c in "-_" else "_" for c in self.name).strip("_")


RSYSLOG_OPTIONS = ("threads", "rcvbuf")


def parse_servers(
    names: str,
    plura_variants: list[str],
    rsyslog_variants: Sequence[str] = (),
    plura_trees: Sequence[str] = (),
) -> list[ServerSpec]:
    """`--servers rsyslog,plura-relay` plus one plura-relay variant per `--plura-args`, one
    rsyslog variant per `--rsyslog-args` (`threads=N rcvbuf=SIZE`: imudp's threads and
    rcvbufSize) and one plura-relay per `--plura-tree DIR` (another checkout, e.g. a git worktree
    of an earlier commit: before and after measured in the same run)."""
    specs = []
    for name in filter(None, (n.strip() for n in names.split(","))):
        if name not in KINDS:
            raise ValueError(f"unknown server {name!r}; expecting one of {', '.join(KINDS)}")
        specs.append(ServerSpec(name, name))
    for extra in plura_variants:
        args = tuple(shlex.split(extra))
        specs.append(ServerSpec("plura-relay " + " ".join(args), "plura-relay", args))
    for extra in rsyslog_variants:
        args = tuple(shlex.split(extra))
        for arg in args:
            key, _, value = arg.partition("=")
            if key not in RSYSLOG_OPTIONS or not value:
                raise ValueError(f"--rsyslog-args {arg!r}: expecting threads=N or rcvbuf=SIZE")
        specs.append(ServerSpec("rsyslog " + " ".join(args), "rsyslog", args))
    for tree in plura_trees:
        root = Path(tree).resolve()
        if not (root / "relay" / "__main__.py").is_file():
            raise ValueError(f"--plura-tree {tree}: no relay/ package there")
        specs.append(ServerSpec(f"plura-relay @{_revision(root)}", "plura-relay", tree=str(root)))
    if not specs:
        raise ValueError("no server selected")
    return specs


MYPYC_SOURCES = ("relay", "setup.py", "build_backend.py", "pyproject.toml", "README.md")


def build_mypyc_tree(out_dir: Path, source: Path = REPO) -> ServerSpec:
    """`source`'s package built with its hot path compiled, as the container image builds it
    (`PLURA_RELAY_MYPYC=1 pip wheel`), unpacked into out_dir/mypyc/tree: a server like a
    --plura-tree one (PYTHONPATH=tree), its compiled modules found before their sources."""
    base = out_dir / "mypyc"
    shutil.rmtree(base, ignore_errors=True)
    src, wheels, tree = base / "src", base / "wheels", base / "tree"
    ignore = shutil.ignore_patterns("__pycache__", "*.so")
    for name in MYPYC_SOURCES:
        path = source / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(src)],
        env={**os.environ, "PLURA_RELAY_MYPYC": "1"}, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    if built.returncode != 0:
        raise RuntimeError(f"mypyc build failed: {built.stderr.strip()[-2000:]}")
    (wheel,) = wheels.glob("*.whl")
    shutil.unpack_archive(wheel, tree, "zip")
    return ServerSpec(f"plura-relay mypyc @{_revision(source)}", "plura-relay", tree=str(tree))


def _revision(root: Path) -> str:
    """The short commit a checkout is at (its directory name if git cannot tell)."""
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return root.name
    return done.stdout.strip() or root.name


def free_port() -> int:
    """A port that is free for both UDP and TCP on 127.0.0.1 right now."""
    for _ in range(50):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(port)
    raise RuntimeError("found no port free for both UDP and TCP")


def code_digest(spec: ServerSpec) -> str:
    """Digest of the code a server runs (relay/ sources may be edited meanwhile)."""
    if spec.kind == "rsyslog":
        paths = [Path(shutil.which("rsyslogd") or "/usr/sbin/rsyslogd")]
    else:
        paths = sorted((Path(spec.tree or REPO) / "relay").rglob("*.py"))
    h = hashlib.sha256()
    for path in paths:
        with contextlib.suppress(OSError):
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def plura_relay_available() -> bool:
    """Does `python -m relay serve --help` work in this checkout?"""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "relay", "serve", "--help"],
            capture_output=True, cwd=REPO, env=_env(), timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _env(tree: str = "") -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [tree or str(REPO), env.get("PYTHONPATH")]))
    return env


class Server:
    """One running server process (and whatever it forks)."""

    def __init__(self, spec: ServerSpec, port: int, base: Path, cpu: str | None) -> None:
        self.spec, self.port, self.cpu = spec, port, cpu
        base = base.resolve()  # the server runs in work_dir: no relative paths
        self.log_dir, self.work_dir = base / "logs", base / "work"
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen: dict[int, bytes] = {}  # pid -> cmdline, of the tree, for stop()
        self.probes = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        if self.spec.kind == "rsyslog":
            from relay.node.rsyslog_conf import collector_conf

            conf = self.work_dir / "rsyslog.conf"
            options = dict(arg.partition("=")[::2] for arg in self.spec.args)
            conf.write_text(
                collector_conf(
                    str(self.log_dir), port=self.port, address="127.0.0.1",
                    work_dir=str(self.work_dir), udp_threads=int(options.get("threads", 0)),
                    udp_rcvbuf=options.get("rcvbuf", ""),
                )
            )  # fmt: skip
            pidfile = self.work_dir / "rsyslogd.pid"
            return ["rsyslogd", "-n", "-f", str(conf), "-i", str(pidfile)]
        state = self.work_dir / "state"
        config: list[str] = []
        if not {"-c", "--config"} & set(self.spec.args):
            # The sources session brings 10,000 new addresses within seconds; the default
            # admission rate (children.max_new_per_second 100, burst 1000: a spoofed flood must
            # not create a file per address) would send most of them to ceelog-overflow.log,
            # where rsyslog writes a file per source. Admit them all, as rsyslog does.
            conf = self.work_dir / "plura-load.toml"
            conf.write_text(LOAD_CONFIG)
            config = ["--config", str(conf)]
        return [
            sys.executable, "-m", "relay", "serve", *config, "--listen", f"127.0.0.1:{self.port}",
            "--log-dir", str(self.log_dir), "--state-dir", str(state), *self.spec.args,
        ]  # fmt: skip

    def start(self) -> Server:
        for d in (self.log_dir, self.work_dir):
            d.mkdir(parents=True, exist_ok=True)
        udp, tcp = procfs.listening(self.port)
        if udp or tcp:
            raise RuntimeError(f"port {self.port} is already in use on this machine")
        argv = self.command()
        if self.cpu is not None:
            argv = ["taskset", "-c", self.cpu, *argv]  # taskset execs: same pid
        (self.work_dir / "command").write_text(shlex.join(argv) + "\n")
        with open(self.work_dir / "server.log", "wb") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.work_dir, env=_env(self.spec.tree),
            )  # fmt: skip
        return self

    def log_tail(self, n: int = 15) -> str:
        try:
            lines = (self.work_dir / "server.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.spec.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
            )

    def wait_ready(self, timeout_s: float = 30.0) -> float:
        """Poll until both ports are bound and a UDP and a TCP probe landed; seconds taken."""
        t0 = time.monotonic()
        while not all(procfs.listening(self.port)):
            self.check_alive()
            if time.monotonic() - t0 > timeout_s:
                raise RuntimeError(f"{self.spec.name} not listening on {self.port} in time")
            time.sleep(0.05)
        for proto in ("udp", "tcp"):
            self._probe(proto, t0 + timeout_s)
        self.remember_tree()
        return time.monotonic() - t0

    def _probe(self, proto: str, deadline: float) -> None:
        probe_file = self.log_dir / "ceelog-127.0.0.1.log"
        while True:
            self.check_alive()
            seq = self.probes = self.probes + 1
            with contextlib.suppress(OSError):  # not accepting yet
                send_probe(self.port, proto, seq)
            for _ in range(10):
                time.sleep(0.05)
                if probe_file.exists() and f"seq={seq:08d}".encode() in probe_file.read_bytes():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.spec.name}: no {proto} probe line in {probe_file}")

    def remember_tree(self) -> None:
        for pid in procfs.process_tree(self.pid):
            self.seen.setdefault(pid, _cmdline(pid))

    def stop(self) -> int | None:
        """SIGTERM (SIGKILL after STOP_TIMEOUT_S); then any forked process seen, by pid."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.remember_tree()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pid, cmdline in self.seen.items():
            if pid != self.proc.pid and cmdline and _cmdline(pid) == cmdline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)  # a worker outliving its parent
        return self.proc.returncode


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
