"""The server: listeners, pipeline and sinks of one process, plus the registry and signals.

`serve()` runs everything in this process (`workers = 1`) or, with `workers > 1`, becomes the
supervisor of worker processes (relay.workers) that share the port through SO_REUSEPORT.
Shutdown order: stop accepting, let open TCP connections deliver what is in flight, flush and
fsync the files, save the registry, exit. SIGHUP reopens every output file.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import resource
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import msgspec
import uvloop

from relay.bridge import USUAL_BRIDGES, find_bridge_address
from relay.children import Registry
from relay.config import Config, is_auto, parse_address
from relay.hooks import Announcer
from relay.hostnames import DnsHostnames
from relay.limits import Admission, SourceFilter, TokenBuckets
from relay.listeners import LISTEN_BACKLOG, BoundSocket, bind_listeners
from relay.metrics import HealthServer, Readiness, Stats
from relay.pipeline import Pipeline, SourceObserver, ceelog_name
from relay.sinks.files import FileSink
from relay.sinks.forwarders import Forwarders, open_target
from relay.tls import server_context
from relay.transport.tcp import TcpListener
from relay.transport.udp import UdpListener

logger = logging.getLogger(__name__)

Shutdown = Callable[[], Awaitable[object]]
AUTO_RETRY_S = 1.0
FD_HEADROOM = 64  # listeners, pipes, registry, metrics


class Server:
    """Listeners -> pipeline -> files of one process; reports sources to `observer`.

    Constructed inside the running event loop (the file sink schedules its flushes on it).
    """

    def __init__(
        self,
        config: Config,
        sockets: list[BoundSocket],
        *,
        observer: SourceObserver,
        known_sources: Iterable[str] = (),
        admission_share: int = 1,
        worker_index: int = 0,
    ) -> None:
        """`known_sources`: children registered before (admitted whatever the limits);
        `admission_share`: this process's share of max_children (1 of N workers: 1/N);
        `worker_index`: which worker this is (names its forward spools)."""
        self.config = config
        targets = [open_target(f, config.state_dir, worker_index, config.workers)
                   for f in config.forward]  # fmt: skip
        self.forward = Forwarders(targets) if targets else None
        out, listen, children = config.output, config.listen, config.children
        self.sink = FileSink(
            out.log_dir,
            max_open_files=out.max_open_files,
            file_mode=out.file_mode,
            dir_mode=out.dir_mode,
            fsync_on_close=out.fsync_on_close,
            flush_after_s=out.flush_interval_s,
            schedule=asyncio.get_running_loop().call_later,
        )
        hostnames = None
        if config.hostname.fallback == "dns":
            hostnames = DnsHostnames(ttl_s=config.hostname.dns_cache_ttl_s)
        self.pipeline = Pipeline(
            self.sink,
            observer=observer,
            hostnames=hostnames,
            max_message_bytes=config.listen.max_message_bytes,
            rsyslog_sd=config.parse.unterminated_sd == "rsyslog",
            routes=config.route,
            admission=Admission(
                known_sources,
                max(1, children.max_children // admission_share),
                children.max_new_per_second / admission_share,
                max(1, children.new_sources_burst // admission_share),
            ),
            trusted_relays=(
                SourceFilter(config.origin.trusted_sources) if config.origin.trust_origip else None
            ),
            forward=self.forward,
        )
        self.sources = SourceFilter(listen.allowed_sources) if listen.allowed_sources else None
        self.rate_limit = (
            TokenBuckets(listen.rate_limit_per_source, listen.rate_limit_burst)
            if listen.rate_limit_per_source
            else None
        )
        self._tasks: list[asyncio.Task[None]] = []
        self.sockets = sockets
        self.bound = [(s.kind, s.host, s.port) for s in sockets]
        self.udp: list[UdpListener] = []
        self.tcp: list[tuple[TcpListener, BoundSocket]] = []
        self.health: HealthServer | None = None

    async def start_listeners(self) -> None:
        loop = asyncio.get_running_loop()
        listen = self.config.listen
        tls = server_context(listen.tls) if any(b.kind == "tls" for b in self.sockets) else None
        for bound in self.sockets:
            if bound.kind in ("tcp", "tls"):
                tcp = TcpListener(
                    functools.partial(self.pipeline.handle_batch, lossless=True),
                    max_message_bytes=listen.max_message_bytes,
                    oversize=listen.oversize,
                    sources=self.sources,
                    rate_limit=self.rate_limit,
                    max_connections=listen.max_connections,
                    idle_timeout_s=listen.idle_timeout_s,
                    gate=self.forward.gate if self.forward is not None else None,
                    tls=tls if bound.kind == "tls" else None,
                    tls_handshake_timeout_s=listen.tls.handshake_timeout_s,
                )
                self._tasks.append(loop.create_task(tcp.close_idle_forever()))
                tcp.server = await loop.create_server(
                    tcp.protocol, sock=bound.sock, backlog=LISTEN_BACKLOG
                )
                self.tcp.append((tcp, bound))
            else:
                udp = UdpListener(
                    bound.sock,
                    self.pipeline.handle_batch,
                    max_message_bytes=listen.max_message_bytes,
                    sources=self.sources,
                    rate_limit=self.rate_limit,
                )
                udp.start()
                self.udp.append(udp)
            logger.info("listening on %s %s:%d", bound.kind, bound.host or "0.0.0.0", bound.port)
        self._tasks.append(loop.create_task(self._check_rotation_forever()))
        if self.forward is not None:
            self.forward.start()

    async def _check_rotation_forever(self) -> None:
        interval = self.config.output.reopen_check_interval_s
        while True:
            await asyncio.sleep(interval)
            self.sink.reopen_rotated()

    def stats(self) -> dict[str, float]:
        """Counters and gauges of this process, for /metrics (and for a supervisor)."""
        sink, pipeline = self.sink, self.pipeline
        stats: dict[str, float] = {
            "general_parse": pipeline.general,
            "lines_written": sink.lines_written,
            "bytes_written": sink.bytes_written,
            "write_failed": sink.lines_failed,
            "open_files": sink.open_files,
            "evictions": sink.evictions,
            "rotations": sink.rotations,
            "buffered_bytes": sink.buffered_bytes,
            "overflow": pipeline.overflow,
            "origin_stamped": pipeline.origin_stamped,
            "origin_invalid": pipeline.origin_invalid,
        }
        if self.forward is not None:
            stats.update(self.forward.stats())
        parts = [udp.stats() for udp in self.udp] + [tcp.stats() for tcp, _ in self.tcp]
        for part in parts:
            for key, value in part.items():
                stats[key] = stats.get(key, 0) + value
        return stats

    def ready(self) -> tuple[bool, str]:
        """Listening, and the log directory is writable."""
        if not self.udp and not self.tcp:
            return False, "no listener bound"
        return log_dir_writable(self.config.output.log_dir)

    def reopen(self) -> None:
        logger.info("SIGHUP: reopening output files")
        self.sink.reopen()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for udp in self.udp:
            udp.close()
        drain_s = self.config.listen.drain_timeout_s
        if self.forward is not None:
            self.forward.drain()  # senders paused by a full spool deliver what is in flight too
        await asyncio.gather(*(tcp.drain_and_close(drain_s, b.sock) for tcp, b in self.tcp))
        self.sink.close()
        if self.forward is not None:
            await self.forward.stop()
        logger.info(
            "stopped: %d messages received, %d lines written, %d not written",
            self.pipeline.received, self.sink.lines_written, self.sink.lines_failed,
        )  # fmt: skip


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


def health_server(config: Config, stats: Stats, ready: Readiness) -> HealthServer | None:
    if not config.metrics.listen:
        return None
    return HealthServer(parse_address(config.metrics.listen, 9514), stats, ready)


async def start_health(health: HealthServer) -> None:
    """A metrics port already in use must not keep syslog from being received: log it."""
    try:
        await health.start()
    except OSError as exc:
        logger.error("cannot serve metrics and health: %s", exc)


async def remove_expired_forever(registry: Registry, config: Config) -> None:
    """children.retention_s: remove the ceelog file of a child inactive for that much longer."""
    children = config.children
    if not children.retention_s:
        return
    expiry_s = children.inactive_after_s + children.retention_s
    while True:
        await asyncio.sleep(min(expiry_s / 4, 60.0))
        cutoff = time.time() - expiry_s
        for child in registry.children():
            path = Path(config.output.log_dir) / ceelog_name(child.ip)
            if child.last_seen < cutoff and path.exists():
                try:
                    path.unlink()
                    since = time.strftime("%Y-%m-%d %H:%M", time.localtime(child.last_seen))
                    logger.info("removed %s: child %s inactive since %s", path, child.ip, since)
                except OSError as exc:
                    logger.warning("cannot remove %s: %s", path, exc)


def open_registry(config: Config) -> tuple[Registry, Announcer]:
    Path(config.state_dir).mkdir(parents=True, exist_ok=True)
    registry = Registry(Path(config.state_dir), save_interval_s=config.children.save_interval_s)
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


async def serve(
    config: Config,
    *,
    shutdown: Shutdown | None = None,
    on_ready: Callable[[Server | object], None] | None = None,
) -> None:
    """Run until `shutdown()` returns (default: SIGTERM or SIGINT)."""
    signals = None
    if shutdown is None:
        signals = Signals()
        signals.install()
        shutdown = signals.stop.wait
    try:
        resolving = asyncio.ensure_future(resolve_listen(config))
        stopping = asyncio.ensure_future(shutdown())
        await asyncio.wait({resolving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not resolving.done():  # stopped while waiting for the bridge
            resolving.cancel()
            return
        stopped = stopping.done()
        stopping.cancel()
        if stopped:
            return
        config = resolving.result()
        if config.workers > 1:
            from relay.workers import supervise

            await supervise(config, shutdown=shutdown, on_ready=on_ready, signals=signals)
        else:
            await _serve_here(config, shutdown, on_ready, signals)
    finally:
        if signals is not None:
            signals.remove()


async def _serve_here(
    config: Config,
    shutdown: Shutdown,
    on_ready: Callable[[Server | object], None] | None,
    signals: Signals | None,
) -> None:
    loop = asyncio.get_running_loop()
    registry, announcer = open_registry(config)
    [sockets] = bind_listeners(config.listen)
    known = [child.ip for child in registry.children()]
    server = Server(config, sockets, observer=registry, known_sources=known)
    if signals is not None:
        signals.on_hup = server.reopen
    await server.start_listeners()
    background = [
        loop.create_task(registry.run_saver()),
        loop.create_task(announcer.run(registry)),
        loop.create_task(remove_expired_forever(registry, config)),
    ]
    inactive_after_s = config.children.inactive_after_s
    health = health_server(
        config,
        lambda: {**server.stats(), **registry_stats(registry, inactive_after_s), "workers": 1},
        server.ready,
    )
    if health is not None:
        await start_health(health)
    server.health = health
    if on_ready is not None:
        on_ready(server)
    try:
        await shutdown()
        logger.info("shutting down")
    finally:
        if health is not None:
            await health.stop()
        await server.stop()
        await announcer.settle(config.children.hook_timeout_s)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        registry.close()


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


def run(config: Config) -> None:
    """Blocking entry point for the CLI."""
    raise_open_file_limit(
        config.output.max_open_files + config.listen.max_connections + FD_HEADROOM
    )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(config))
