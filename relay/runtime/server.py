"""One process's server: listeners, pipeline, file sink and forward targets, built from Config.

`serve_here` runs it with the registry and signals in this process (`workers = 1`);
relay.runtime.workers runs one per worker process. Shutdown order: stop accepting, let open TCP
connections deliver what is in flight, flush and fsync the files, save the registry, exit.
SIGHUP reopens every output file.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any

from relay.config import Config
from relay.forward.target import Target
from relay.forward.targets import Forwarders, open_targets
from relay.ingest.limits import Admission, SourceFilter, TokenBuckets
from relay.ingest.listeners import LISTEN_BACKLOG, BoundSocket, bind_listeners, hand_over
from relay.ingest.relp_listener import RelpListener, Safety
from relay.ingest.tcp import TcpListener
from relay.ingest.udp import UdpListener
from relay.node.hostnames import DnsHostnames
from relay.ops.metrics import HealthServer
from relay.output.files import FileSink
from relay.output.routes import PodNames
from relay.pipeline import Pipeline, SourceObserver
from relay.runtime.common import (
    Shutdown,
    Signals,
    health_server,
    kubernetes_stats,
    log_dir_writable,
    main_health,
    open_registry,
    pod_watch,
    registry_stats,
    release_state,
    remove_expired_forever,
    start_health,
    stop_health,
    try_lock_state,
    wait_for_state,
)
from relay.tls import server_context

logger = logging.getLogger(__name__)

HANDOVER_SETTLE_S = 0.1
"""After handing the sockets to a successor, keep serving this long: what the kernel steered
to ours just before (a SYN in its handshake, a datagram in flight) still arrives here."""


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
        standby: bool = False,
        pods: Callable[[str], PodNames | None] | None = None,
    ) -> None:
        """`known_sources`: children registered before (admitted whatever the limits);
        `admission_share`: this process's share of max_children (1 of N workers: 1/N);
        `worker_index`: which worker this is (names its forward spools); `standby`: another
        process still owns the state dir, the forward spools are opened by `take_over`; `pods`:
        the pod index, in the process that watches (route file names)."""
        self.config = config
        self._worker_index = worker_index
        self.forward = None
        if config.forward:
            targets, unusable = ([], {}) if standby else self._open_targets()
            self.forward = Forwarders(targets, unusable, held=standby)
        out, listen, children = config.output, config.listen, config.children
        self.sink = FileSink(
            out.log_dir,
            max_open_files=out.max_open_files,
            file_mode=out.file_mode,
            dir_mode=out.dir_mode,
            fsync_on_close=out.fsync_on_close,
            flush_after_s=out.flush_interval_s,
            schedule=asyncio.get_running_loop().call_later,
            shared=config.workers > 1,
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
            pods=pods,
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
        self.tcp: list[tuple[TcpListener, BoundSocket]] = []  # RELP listeners too
        self.health: HealthServer | None = None
        self.scrape: HealthServer | None = None  # metrics.scrape_listen

    def _open_targets(self) -> tuple[list[Target], dict[str, str]]:
        config = self.config
        return open_targets(config.forward, config.state_dir, self._worker_index, config.workers)

    def take_over(self) -> None:
        """The state dir is ours now: open the forward spools (what the previous process left
        in them is sent first) and hand them what was received meanwhile."""
        if self.forward is not None:
            self.forward.adopt(*self._open_targets())

    async def start_listeners(self) -> None:
        loop = asyncio.get_running_loop()
        listen = self.config.listen
        secure = any(b.kind in ("tls", "relp-tls") for b in self.sockets)
        tls = server_context(listen.tls) if secure else None
        for bound in self.sockets:
            if bound.kind in ("tcp", "tls", "relp", "relp-tls"):
                settings: dict[str, Any] = dict(
                    max_message_bytes=listen.max_message_bytes,
                    oversize=listen.oversize,
                    sources=self.sources,
                    rate_limit=self.rate_limit,
                    max_connections=listen.max_connections,
                    max_connections_per_source=listen.max_connections_per_source,
                    idle_timeout_s=listen.idle_timeout_s,
                    frame_timeout_s=listen.frame_timeout_s,
                    gate=self.forward.gate if self.forward is not None else None,
                    tls=tls if bound.kind in ("tls", "relp-tls") else None,
                    tls_handshake_timeout_s=listen.tls.handshake_timeout_s,
                )
                on_frames = functools.partial(self.pipeline.handle_batch, lossless=True)
                tcp: TcpListener
                if bound.kind.startswith("relp"):
                    tcp = RelpListener(
                        on_frames,
                        commit=self.make_safe,
                        ack=listen.relp.ack,
                        window=listen.relp.window,
                        **settings,
                    )
                else:
                    tcp = TcpListener(on_frames, **settings)
                if listen.extra_frame_delimiter >= 0:
                    tcp.extra_frame_delimiter = listen.extra_frame_delimiter
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
                    batch_wait_s=listen.udp_batch_wait_s,
                )
                udp.start()
                self.udp.append(udp)
            logger.info("listening on %s %s:%d", bound.kind, bound.host or "0.0.0.0", bound.port)
        self._tasks.append(loop.create_task(self._check_rotation_forever()))
        if self.forward is not None:
            self.forward.start()

    def make_safe(self, fsync: bool) -> Safety:
        """For RELP acknowledgements: write every line received so far to its file and to the
        forward spools (`fsync`: and fsync them). "failed" when lines could not be written
        (lost: the acks must not go out), "wait" while the spools are not ours yet."""
        failed = self.sink.lines_failed
        self.sink.flush()
        if fsync:
            self.sink.sync()
        if self.sink.lines_failed != failed:
            return "failed"
        if self.forward is not None and not self.forward.make_safe(fsync):
            return "wait"
        return "safe"

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
            "torn_tails": sink.torn_tails,
            "buffered_bytes": sink.buffered_bytes,
            "overflow": pipeline.overflow,
            "origin_stamped": pipeline.origin_stamped,
            "origin_invalid": pipeline.origin_invalid,
        }
        for name, dropped in pipeline.route_dropped().items():
            stats[f"route_dropped|{name}"] = dropped
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
        problem = self.forward.problem() if self.forward is not None else None
        if problem is not None:
            return False, problem
        return log_dir_writable(self.config.output.log_dir)

    def reopen(self) -> None:
        logger.info("SIGHUP: reopening output files")
        self.sink.reopen()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.config.workers == 1:  # workers steer by source IP: nothing to hand over
            hand_over(self.sockets)
            await asyncio.sleep(HANDOVER_SETTLE_S)
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


async def serve_here(
    config: Config,
    shutdown: Shutdown,
    on_ready: Callable[[Server | object], None] | None,
    signals: Signals | None,
) -> None:
    watch = pod_watch(config)
    registry, announcer = open_registry(config, watch)
    lock = try_lock_state(config.state_dir)
    [sockets] = bind_listeners(config.listen)
    known = [child.ip for child in registry.children()]
    server = Server(
        config,
        sockets,
        observer=registry,
        known_sources=known,
        standby=lock is None,
        pods=watch.index.resolve if watch is not None else None,
    )
    if signals is not None:
        signals.on_hup = server.reopen
    await server.start_listeners()
    background: list[asyncio.Task[None]] = []

    async def own_state() -> None:
        """Save the registry, announce and send upstream once the state dir is ours."""
        nonlocal lock
        if lock is None:
            lock = await wait_for_state(config.state_dir)
            registry.take_over()
            server.take_over()
            logger.info("took over %s from the previous process", config.state_dir)
        loop = asyncio.get_running_loop()
        background.extend([
            loop.create_task(registry.run_saver()),
            loop.create_task(announcer.run(registry)),
            loop.create_task(remove_expired_forever(registry, config)),
        ])  # fmt: skip

    owner = asyncio.get_running_loop().create_task(own_state())
    if watch is not None:  # on this loop, beside reception: never on a message's path
        background.append(asyncio.get_running_loop().create_task(watch.run()))
    inactive_after_s = config.children.inactive_after_s
    health = health_server(
        config,
        lambda: {
            **server.stats(),
            **registry_stats(registry, inactive_after_s),
            **kubernetes_stats(registry, watch),
            "workers": 1,
        },
        server.ready,
        registry,
    )
    await start_health(health)
    server.health = main_health(health)
    server.scrape = next((h for h in health if h.metrics_only), None)
    if on_ready is not None:
        on_ready(server)
    try:
        await shutdown()
        logger.info("shutting down")
    finally:
        await stop_health(health)
        await server.stop()
        owner.cancel()
        await asyncio.gather(owner, return_exceptions=True)
        if background:
            await announcer.settle(config.children.hook_timeout_s)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if lock is not None:
            registry.close()
            release_state(lock)
        else:  # never ours: the owner saves its own; what only we saw is lost (logged)
            logger.warning("stopped before the state dir was handed over: registry not saved")
