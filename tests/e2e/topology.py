"""A Kubernetes worker node built from network namespaces, as the vendor guide draws it.

`Topology` makes a "node" namespace holding flannel's bridge `cni0` (10.244.2.1/24) and "pods":
namespaces joined to the bridge by veth pairs (`eth0` in the pod, `veth-<pod>` on the bridge).
Processes run inside with `ip netns exec`, are started by `spawn()` and stopped by their pid in
`close()`, which then deletes every namespace (the node's takes the bridge and the veth ends with
it). Nothing can leave: the node namespace has no uplink and the pods no route beyond the /24.

Names carry the pid of the pytest process that made them (`pe2e-<pid>-<hex>-<role>`), so
`remove_stale()` deletes what a crashed run left behind without touching a concurrent run's.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

NS_PREFIX = "pe2e-"
BRIDGE = "cni0"
NODE_IP = "10.244.2.1"
POD_PREFIX_LEN = 24
STOP_TIMEOUT_S = 5.0
PRIVATE_DEV_SH = """
dev="$0"
for node in null zero full random urandom tty; do
    [ -e "/dev/$node" ] || continue
    : > "$dev/$node" && mount --bind "/dev/$node" "$dev/$node" || exit 1
done
mount --rbind "$dev" /dev && exec "$@"
"""
"""Run "$@" with /dev replaced by directory $0 holding the usual device nodes (bind mounts,
seen only in this private mount namespace: `unshare --mount` makes propagation private)."""
IP_TIMEOUT_S = 10.0


def ip(*args: str, check: bool = True) -> str:
    """Run `ip ARGS`; raise with its stderr when it fails (and `check`)."""
    done = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def netns_names() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def netns_pids(name: str) -> list[int]:
    return [int(pid) for pid in ip("netns", "pids", name, check=False).split()]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_pids(pids: list[int]) -> None:
    """SIGKILL these pids (processes a run of this test started in its own namespaces)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def remove_stale() -> None:
    """Delete namespaces (and their processes) left by runs whose pytest process is gone."""
    for name in netns_names():
        owner = name.removeprefix(NS_PREFIX).split("-")[0]
        if not name.startswith(NS_PREFIX) or not owner.isdigit() or pid_alive(int(owner)):
            continue
        kill_pids(netns_pids(name))
        ip("netns", "del", name, check=False)


class Topology:
    """One node namespace with bridge `cni0`, pods on it, and the processes running inside."""

    def __init__(self, workdir: Path) -> None:
        self.tag = f"{NS_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self.node = f"{self.tag}-node"
        self.workdir = workdir
        self.namespaces: list[str] = []
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def _add_netns(self, name: str) -> str:
        self.namespaces.append(name)  # before creating it: close() must delete a half-made one
        ip("netns", "add", name)
        ip("-n", name, "link", "set", "lo", "up")
        return name

    def add_node(self) -> None:
        self._add_netns(self.node)

    def add_bridge(self, address: str = NODE_IP) -> None:
        ip("-n", self.node, "link", "add", BRIDGE, "type", "bridge")
        ip("-n", self.node, "addr", "add", f"{address}/{POD_PREFIX_LEN}", "dev", BRIDGE)
        ip("-n", self.node, "link", "set", BRIDGE, "up")

    def add_pod(self, name: str, address: str) -> str:
        """A pod namespace with `eth0` at `address`, its veth peer enslaved to the bridge."""
        pod = self._add_netns(f"{self.tag}-{name}")
        veth = f"veth-{name}"[:15]  # IFNAMSIZ
        ip("-n", self.node, "link", "add", veth, "type", "veth", "peer", "name", "eth0",
           "netns", pod)  # fmt: skip
        ip("-n", self.node, "link", "set", veth, "master", BRIDGE, "up")
        ip("-n", pod, "addr", "add", f"{address}/{POD_PREFIX_LEN}", "dev", "eth0")
        ip("-n", pod, "link", "set", "eth0", "up")
        return pod

    def spawn(
        self,
        netns: str,
        argv: list[str],
        *,
        name: str,
        hostname: str | None = None,
        dev: Path | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start `argv` in `netns`; its output goes to `<workdir>/<name>.out`.

        `hostname`: in its own UTS namespace with that name. `dev`: with a private /dev, as a
        container has, backed by the directory `dev` (so /dev/log made inside is `dev/log`
        outside), in its own mount namespace. `ip netns exec`, `unshare` and `sh -c 'exec'`
        all exec, so the pid is argv's own.
        """
        if dev is not None:
            dev.mkdir(exist_ok=True)
            argv = ["unshare", "--mount", "sh", "-c", PRIVATE_DEV_SH, str(dev), *argv]
        if hostname is not None:
            argv = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', hostname, *argv]
        with (self.workdir / f"{name}.out").open("wb") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", netns, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
            )
        self.procs.append((name, proc))
        return proc

    def run(self, netns: str, argv: list[str], timeout_s: float = 10.0) -> str:
        """Run `argv` in `netns` to completion; its stdout, or an error with its output."""
        done = subprocess.run(
            ["ip", "netns", "exec", netns, *argv],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            env=clean_env(),
        )
        if done.returncode != 0:
            raise RuntimeError(f"{argv} in {netns}: exit {done.returncode}: {done.stderr}")
        return done.stdout

    def output(self, name: str) -> str:
        path = self.workdir / f"{name}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def outputs(self) -> str:
        """Every spawned process's output, for failure messages."""
        return "\n".join(f"--- {name}:\n{self.output(name)}" for name, _ in self.procs)

    def listening(self, netns: str, port: int) -> set[tuple[str, str]]:
        """(udp|tcp, local address) of the sockets listening on `port` in `netns`."""
        found = set()
        for kind, flag in (("udp", "-u"), ("tcp", "-t")):
            out = self.run(netns, ["ss", "-Hln", flag, f"sport = :{port}"])
            found |= {(kind, line.split()[3].rpartition(":")[0]) for line in out.splitlines()}
        return found

    def close(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL), then delete every namespace."""
        for _, proc in reversed(self.procs):
            stop(proc)
        for name in reversed(self.namespaces):
            kill_pids(netns_pids(name))  # e.g. nginx workers of a master that was killed
            ip("netns", "del", name, check=False)
        self.namespaces.clear()


def stop(proc: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM) -> int:
    """Signal `proc` by its pid and reap it, with SIGKILL after STOP_TIMEOUT_S."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def clean_env() -> dict[str, str]:
    """The environment without proxy settings: clients must talk to the pods directly."""
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


def wait_until(predicate: Callable[[], object], timeout_s: float, interval_s: float = 0.05) -> bool:
    """Poll `predicate()` until it is true or `timeout_s` passed; its last result."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)
