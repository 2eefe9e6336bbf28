"""The server: builds listeners, pipeline, sinks and registry from `Config`, owns signals and drain.

Shutdown order: stop accepting, let open TCP connections deliver what is in flight, flush and
fsync the files, save the registry, exit. SIGHUP reopens every output file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop

from relay.children import Registry
from relay.config import Config, parse_address
from relay.hooks import Announcer
from relay.hostnames import DnsHostnames
from relay.pipeline import Pipeline
from relay.sinks.files import FileSink
from relay.transport.addresses import bind_socket
from relay.transport.tcp import TcpListener
from relay.transport.udp import UdpListener

logger = logging.getLogger(__name__)

Shutdown = Callable[[], Awaitable[object]]


class Server:
    """Everything one process runs; `serve()` drives it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        out = config.output
        self.sink = FileSink(
            out.log_dir,
            max_open_files=out.max_open_files,
            file_mode=out.file_mode,
            dir_mode=out.dir_mode,
            fsync_on_close=out.fsync_on_close,
        )
        Path(config.state_dir).mkdir(parents=True, exist_ok=True)
        self.registry = Registry(
            Path(config.state_dir), save_interval_s=config.children.save_interval_s
        )
        hostnames = None
        if config.hostname.fallback == "dns":
            hostnames = DnsHostnames(ttl_s=config.hostname.dns_cache_ttl_s)
        self.pipeline = Pipeline(
            self.sink,
            observer=self.registry,
            hostnames=hostnames,
            max_message_bytes=config.listen.max_message_bytes,
            rsyslog_sd=config.parse.unterminated_sd == "rsyslog",
        )
        self.udp: list[UdpListener] = []
        self.tcp: list[TcpListener] = []
        self.bound: list[tuple[str, str, int]] = []  # (kind, host, port) actually bound

    async def start_listeners(self) -> None:
        loop = asyncio.get_running_loop()
        listen = self.config.listen
        reuse_port = self.config.workers > 1
        for address in listen.addresses:
            host, port = parse_address(address)
            if listen.tcp:
                tcp_sock = bind_socket(host, port, socket.SOCK_STREAM, reuse_port=reuse_port)
                port = tcp_sock.getsockname()[1]  # port 0: UDP takes the same number
                tcp = TcpListener(
                    self.pipeline.handle,
                    max_message_bytes=listen.max_message_bytes,
                    oversize=listen.oversize,
                )
                tcp.server = await loop.create_server(tcp.protocol, sock=tcp_sock, backlog=1024)
                self.tcp.append(tcp)
                self.bound.append(("tcp", host, port))
            if listen.udp:
                udp_sock = bind_socket(
                    host,
                    port,
                    socket.SOCK_DGRAM,
                    reuse_port=reuse_port,
                    rcvbuf_bytes=listen.rcvbuf_bytes,
                )
                udp = UdpListener(self.pipeline.handle, max_message_bytes=listen.max_message_bytes)
                await loop.create_datagram_endpoint(lambda u=udp: u, sock=udp_sock)  # type: ignore[misc]
                self.udp.append(udp)
                self.bound.append(("udp", host, udp_sock.getsockname()[1]))
        for kind, host, port in self.bound:
            logger.info("listening on %s %s:%d", kind, host or "0.0.0.0", port)

    async def flush_forever(self) -> None:
        interval = self.config.output.flush_interval_s
        while True:
            await asyncio.sleep(interval)
            self.sink.flush()

    async def stop(self) -> None:
        for udp in self.udp:
            if udp.transport is not None:
                udp.transport.close()
        await asyncio.gather(
            *(tcp.drain_and_close(self.config.listen.drain_timeout_s) for tcp in self.tcp)
        )
        self.sink.close()
        self.registry.close()
        logger.info(
            "stopped: %d messages received, %d lines written, %d not written",
            self.pipeline.received, self.sink.lines_written, self.sink.lines_failed,
        )  # fmt: skip


async def serve(
    config: Config,
    *,
    shutdown: Shutdown | None = None,
    on_ready: Callable[[Server], None] | None = None,
) -> None:
    """Run until `shutdown()` returns (default: SIGTERM or SIGINT)."""
    loop = asyncio.get_running_loop()
    server = Server(config)
    stop_event = asyncio.Event()
    if shutdown is None:
        shutdown = stop_event.wait
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop_event.set)
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, _reopen, server)
    hooks = config.children
    announcer = Announcer(
        command=list(hooks.hook_command) or None,
        url=hooks.hook_url or None,
        backoff_initial_s=hooks.hook_backoff_initial_s,
        backoff_max_s=hooks.hook_backoff_max_s,
        timeout_s=hooks.hook_timeout_s,
    )
    await server.start_listeners()
    background = [
        loop.create_task(server.flush_forever()),
        loop.create_task(server.registry.run_saver()),
        loop.create_task(announcer.run(server.registry)),
    ]
    if on_ready is not None:
        on_ready(server)
    try:
        await shutdown()
        logger.info("shutting down")
    finally:
        await server.stop()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGHUP)


def _reopen(server: Server) -> None:
    logger.info("SIGHUP: reopening output files")
    server.sink.reopen()


def run(config: Config) -> None:
    """Blocking entry point for the CLI."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(config))
