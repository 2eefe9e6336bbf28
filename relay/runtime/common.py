"""What the one-process server and the supervisor of workers share: signals, the registry and its
hooks, the health server, the readiness probe of the log directory, resolving `auto` addresses.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import resource
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec

from relay.children.hooks import Announcer
from relay.children.registry import Registry
from relay.config import Config, is_auto, parse_address
from relay.ingest.addresses import bind_socket
from relay.ingest.steering import SUCCESSOR, steer_to
from relay.kube.index import PodIndex
from relay.kube.watch import PodWatch
from relay.node.bridge import USUAL_BRIDGES, find_bridge_address
from relay.ops.metrics import HealthServer, Readiness, Stats
from relay.pipeline import ceelog_name

logger = logging.getLogger(__name__)

Shutdown = Callable[[], Awaitable[object]]
AUTO_RETRY_S = 1.0
FD_HEADROOM = 64  # listeners, pipes, registry, metrics
CHILDREN_PATH = "/children"
_children_encoder = msgspec.json.Encoder()


def log_dir_writable(log_dir: str) -> tuple[bool, str]:
    """Try it: write a byte to a file and remove it (permission bits say nothing for root, nor
    for a read-only or full filesystem)."""
    probe = Path(log_dir) / f".plura-relay-ready-{os.getpid()}"
    try:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"\n")
        finally:
            os.close(fd)
            probe.unlink()
    except OSError as exc:
        return False, f"log dir {log_dir} is not writable: {exc.strerror or exc}"
    return True, "ready"


def registry_stats(registry: Registry, inactive_after_s: float) -> dict[str, float]:
    return {
        "children": registry.count,
        "children_active": registry.active(time.time(), inactive_after_s),
    }


def health_server(
    config: Config, stats: Stats, ready: Readiness, registry: Registry | None = None
) -> list[HealthServer]:
    """Health and metrics on `metrics.listen`, and /metrics alone on `metrics.scrape_listen`."""
    servers = []
    documents = {}
    if registry is not None:
        documents[CHILDREN_PATH] = lambda: children_document(registry, config.state_dir)
    for address, metrics_only in ((config.metrics.listen, False),
                                  (config.metrics.scrape_listen, True)):  # fmt: skip
        if address:
            host, port = parse_address(address, 9514)
            servers.append(
                HealthServer(
                    (host, port),
                    stats,
                    ready,
                    sock=_bind_http(host, port),
                    metrics_only=metrics_only,
                    documents=documents if not metrics_only else None,
                )
            )
    return servers


def children_document(registry: Registry, state_dir: str) -> bytes:
    """GET /children: the registry as it is in memory now (`plura-relay children` asks for it:
    children.json has new children within save_interval_s but counters only every 30 s); the
    state dir tells the command whether this is the server of the registry it wants."""
    return _children_encoder.encode(
        {"state_dir": os.path.realpath(state_dir), "children": registry.children()}
    )


def _bind_http(host: str, port: int) -> socket.socket | None:
    """SO_REUSEPORT, so that a new process (a rolling update) binds beside the old one, and
    steered to the newest socket: the kubelet's probes reach the new process. None if the
    address cannot be bound (logged by start_health when it tries again)."""
    try:
        sock = bind_socket(host, port, socket.SOCK_STREAM, reuse_port=True)
        sock.listen(64)
    except OSError:
        return None
    try:
        steer_to(sock, SUCCESSOR)
    except OSError as exc:
        logger.warning("metrics %s:%d: cannot steer to the newest process: %s", host, port, exc)
    return sock


async def start_health(health: list[HealthServer]) -> None:
    """A metrics port already in use must not keep syslog from being received: log it."""
    for server in health:
        try:
            await server.start()
        except OSError as exc:
            logger.error("cannot serve metrics and health: %s", exc)


def main_health(health: list[HealthServer]) -> HealthServer | None:
    return next((h for h in health if not h.metrics_only), None)


async def stop_health(health: list[HealthServer]) -> None:
    for server in health:
        await server.stop()


async def remove_expired_forever(registry: Registry, config: Config) -> None:
    """children.retention_s: remove the ceelog file of a child inactive for that much longer."""
    children = config.children
    if not children.retention_s:
        return
    expiry_s = children.inactive_after_s + children.retention_s
    while True:
        await asyncio.sleep(min(expiry_s / 4, 60.0))
        cutoff = time.time() - expiry_s
        # one IP may be several children (pods one after the other): its file goes with the last
        last_seen: dict[str, float] = {}
        for child in registry.children():
            last_seen[child.ip] = max(last_seen.get(child.ip, 0.0), child.last_seen)
        for child in registry.children():
            path = Path(config.output.log_dir) / ceelog_name(child.ip)
            if (
                last_seen[child.ip] < cutoff
                and child.last_seen == last_seen[child.ip]
                and path.exists()
            ):
                try:
                    path.unlink()
                    since = time.strftime("%Y-%m-%d %H:%M", time.localtime(child.last_seen))
                    logger.info("removed %s: child %s inactive since %s", path, child.ip, since)
                except OSError as exc:
                    logger.warning("cannot remove %s: %s", path, exc)


STATE_LOCK = "plura-relay.lock"
STATE_POLL_S = 0.05


def try_lock_state(state_dir: str) -> int | None:
    """The state dir's lock (flock on `<state_dir>/plura-relay.lock`, held for the process's
    life): the registry and the forward spools have one owner. None if another process holds
    it (a rolling update: the old process, until it has saved and exits)."""
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(state_dir) / STATE_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


async def wait_for_state(state_dir: str) -> int:
    path = Path(state_dir) / STATE_LOCK
    try:
        holder = path.read_text().strip() or "?"
    except OSError:
        holder = "?"
    logger.warning(
        "state dir %s is held by another plura-relay (pid %s): receiving meanwhile; the registry "
        "and the forward spools are taken over when it exits", state_dir, holder,
    )  # fmt: skip
    while (fd := try_lock_state(state_dir)) is None:
        await asyncio.sleep(STATE_POLL_S)
    return fd


def release_state(fd: int) -> None:
    os.close(fd)  # closing the descriptor releases the flock


def pod_watch(config: Config) -> PodWatch | None:
    """The watch of this node's pods (`[kubernetes] enabled`), run by the registry's owner."""
    kube = config.kubernetes
    if not kube.enabled:
        return None
    return PodWatch(
        PodIndex(kube.deleted_pod_grace_s),
        kube.node_name,
        kubeconfig=kube.kubeconfig,
        label_keys=kube.labels,
        warning_interval_s=kube.warning_interval_s,
    )


def kubernetes_stats(registry: Registry, watch: PodWatch | None) -> dict[str, float]:
    if watch is None:
        return {}
    return {
        **watch.stats(),
        "kubernetes_resolved": registry.resolved,
        "kubernetes_unresolved": registry.unresolved,
    }


def open_registry(config: Config, watch: PodWatch | None = None) -> tuple[Registry, Announcer]:
    Path(config.state_dir).mkdir(parents=True, exist_ok=True)
    registry = Registry(
        Path(config.state_dir),
        save_interval_s=config.children.save_interval_s,
        resolve=watch.index.resolve if watch is not None else None,
    )
    hooks = config.children
    announcer = Announcer(
        command=list(hooks.hook_command) or None,
        url=hooks.hook_url or None,
        backoff_initial_s=hooks.hook_backoff_initial_s,
        backoff_max_s=hooks.hook_backoff_max_s,
        timeout_s=hooks.hook_timeout_s,
    )
    return registry, announcer


class Signals:
    """SIGTERM/SIGINT set `stop`; SIGHUP calls whatever `on_hup` is by then."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.on_hup: Callable[[], None] = lambda: None

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self.on_hup())

    def remove(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)


async def resolve_listen(config: Config) -> Config:
    """Replace `auto[:PORT]` addresses by the pod-network bridge's, waiting for it if needed."""
    listen = config.listen
    if not any(is_auto(address) for address in listen.addresses):
        return config
    found = find_bridge_address(listen.interface, listen.flannel_subnet_env)
    if found is None:
        logger.warning(
            "listen auto: waiting for %s (or %s) to have an address",
            listen.interface or " / ".join(USUAL_BRIDGES), listen.flannel_subnet_env,
        )  # fmt: skip
    while found is None:
        await asyncio.sleep(AUTO_RETRY_S)
        found = find_bridge_address(listen.interface, listen.flannel_subnet_env)
    addresses = []
    for address in listen.addresses:
        if not is_auto(address):
            addresses.append(address)
            continue
        port = int(address[5:]) if address.startswith("auto:") else 514
        addresses += [f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in found.addresses]
    logger.info(
        "listen auto: %s from %s%s", ", ".join(addresses), found.source,
        " (bound ahead of the bridge)" if found.freebind else "",
    )  # fmt: skip
    # only the pods of this node's network may send, unless configured otherwise
    allowed = listen.allowed_sources or ([found.network] if found.network else [])
    resolved = msgspec.structs.replace(
        listen,
        addresses=addresses,
        freebind=listen.freebind or found.freebind,
        allowed_sources=allowed,
    )
    return msgspec.structs.replace(config, listen=resolved)


def raise_open_file_limit(wanted: int) -> None:
    """Raise RLIMIT_NOFILE's soft limit to the hard one: the file cache, sockets and TCP
    connections all need descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft < wanted:
        logger.warning(
            "open file limit %d is below what the configuration may use (%d): lower "
            "output.max_open_files or listen.max_connections, or raise the limit",
            soft, wanted,
        )  # fmt: skip
