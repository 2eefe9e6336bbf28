"""Several worker processes on one port (SO_REUSEPORT), and the supervisor that owns the registry.

Each worker runs its own listeners, pipeline and file sink on its own copy of the sockets; the
kernel hashes a UDP sender (address and port) to one socket, so a sender's messages stay in
order, and spreads TCP connections. Workers append whole lines with O_APPEND, so two workers may
share a file. The supervisor binds the sockets (and keeps them, so a worker that dies is
restarted on the same sockets without losing what queued meanwhile), owns the child registry and
its hooks, and forwards SIGHUP/SIGTERM. Workers report their sources to it over a pipe:
`(ip, last hostname, last seen, messages)` per source, every REPORT_INTERVAL_S and at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from relay.children.registry import Registry, load_children
from relay.config import Config
from relay.ingest.listeners import BoundSocket, bind_listeners, close_all
from relay.ops.metrics import HealthServer
from relay.runtime.common import (
    Shutdown,
    Signals,
    health_server,
    log_dir_writable,
    main_health,
    open_registry,
    registry_stats,
    release_state,
    remove_expired_forever,
    start_health,
    stop_health,
    try_lock_state,
    wait_for_state,
)
from relay.runtime.server import Server

logger = logging.getLogger(__name__)

REPORT_INTERVAL_S = 0.2
RESTART_DELAY_S = 1.0
STOP_TIMEOUT_S = 30.0
STARTUP_TIMEOUT_S = 30.0
CONFIG_ENV = "PLURA_RELAY_WORKER_CONFIG"
SUPERVISOR_ENV = "PLURA_RELAY_SUPERVISOR_PID"

Sources = list[tuple[str, bytes, float, int, str | None]]
Report = tuple[Sources, dict[str, float]]  # sources seen since the last report, stats now
_encode_report = msgspec.msgpack.Encoder().encode
_decode_report = msgspec.msgpack.Decoder(Report).decode
_LENGTH = struct.Struct("!I")


class SourceTally:
    """A worker's stand-in for the registry: sums what it saw per source until reported."""

    __slots__ = ("_sources",)

    def __init__(self) -> None:
        self._sources: dict[str, list[Any]] = {}

    def observe(
        self, ip: str, hostname: bytes, received_at: float, count: int = 1, via: str | None = None
    ) -> None:
        entry = self._sources.get(ip)
        if entry is None:
            self._sources[ip] = [hostname, received_at, count, via]
        else:
            entry[0] = hostname
            entry[1] = received_at
            entry[2] += count
            if via is not None:
                entry[3] = via

    def drain(self) -> Sources:
        sources, self._sources = self._sources, {}
        return [(ip, e[0], e[1], e[2], e[3]) for ip, e in sources.items()]


# -- worker side ------------------------------------------------------------------------------

PR_SET_PDEATHSIG = 1


def stop_with_supervisor(supervisor_pid: int) -> None:
    """Get SIGTERM when the supervisor dies, even by SIGKILL: a worker left behind would hold
    the port and its spool, and a restarted supervisor would start a second set beside it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        logger.warning("cannot ask to be stopped with the supervisor (prctl)")
    if os.getppid() != supervisor_pid:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


async def run_worker(
    config: Config, sockets: list[BoundSocket], report_fd: int, index: int = 0
) -> None:
    """Serve on inherited sockets until SIGTERM/SIGINT, reporting sources to the supervisor."""
    loop = asyncio.get_running_loop()
    tally = SourceTally()
    supervisor_pid = int(os.environ.get(SUPERVISOR_ENV, os.getppid()))
    known = [child.ip for child in load_children(Path(config.state_dir))]
    server = Server(
        config,
        sockets,
        observer=tally,
        known_sources=known,
        admission_share=config.workers,
        worker_index=index,
    )
    signals = Signals()
    signals.install()
    signals.on_hup = server.reopen
    stop_with_supervisor(supervisor_pid)
    # the supervisor sees every SIGINT of a terminal too; it decides when workers stop
    loop.remove_signal_handler(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    transport, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(report_fd, "wb"))

    def report() -> None:
        if not transport.is_closing():
            payload = _encode_report((tally.drain(), server.stats()))
            transport.write(_LENGTH.pack(len(payload)) + payload)

    async def report_forever() -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL_S)
            report()

    await server.start_listeners()
    report()  # the first report tells the supervisor this worker is serving
    background = [loop.create_task(report_forever())]
    try:
        await signals.stop.wait()
    finally:
        await server.stop()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        report()
        transport.close()
        for signum in (signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(signum)


def worker_sockets(specs: list[str]) -> list[BoundSocket]:
    """`kind,fd,host,port` (as passed by the supervisor) -> sockets."""
    sockets = []
    for spec in specs:
        kind, fd, host, port = spec.split(",", 3)
        sock = socket.socket(fileno=int(fd))
        sock.setblocking(False)
        sockets.append(BoundSocket(kind, host, int(port), sock))
    return sockets


def worker_config() -> Config:
    return msgspec.json.decode(os.environ[CONFIG_ENV], type=Config)


# -- supervisor side --------------------------------------------------------------------------


class _ReportReader(asyncio.Protocol):
    """Length-prefixed reports from one worker, applied to the registry."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self.stats: dict[str, float] = {}
        self._buffer = bytearray()
        self.ready = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(self._buffer)
            if len(self._buffer) < _LENGTH.size + size:
                return
            payload = bytes(self._buffer[_LENGTH.size : _LENGTH.size + size])
            del self._buffer[: _LENGTH.size + size]
            if not self.ready.done():
                self.ready.set_result(None)
            sources, self.stats = _decode_report(payload)
            for ip, hostname, last_seen, count, via in sources:
                self._registry.observe(ip, hostname, last_seen, count, via)

    def connection_lost(self, exc: Exception | None) -> None:
        for future in (self.ready, self.closed):
            if not future.done():
                future.set_result(None)


class Worker:
    """One worker process on its own set of sockets; restarted on the same sockets if it dies."""

    def __init__(self, index: int, config: Config, sockets: list[BoundSocket], registry: Registry):
        self.index = index
        self.config = config
        self.sockets = sockets
        self.registry = registry
        self.process: asyncio.subprocess.Process | None = None
        self.reader: _ReportReader | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        specs = [f"{s.kind},{s.sock.fileno()},{s.host},{s.port}" for s in self.sockets]
        args = [sys.executable, "-m", "relay", "worker", "--index", str(self.index),
                "--report-fd", str(write_fd)]  # fmt: skip
        for spec in specs:
            args += ["--socket", spec]
        env = {
            **os.environ,
            CONFIG_ENV: msgspec.json.encode(self.config).decode(),
            SUPERVISOR_ENV: str(os.getpid()),
        }
        try:
            self.process = await asyncio.create_subprocess_exec(
                *args, pass_fds=[write_fd, *(s.sock.fileno() for s in self.sockets)], env=env
            )
        finally:
            os.close(write_fd)
        _, protocol = await loop.connect_read_pipe(
            lambda: _ReportReader(self.registry), os.fdopen(read_fd, "rb")
        )
        self.reader = protocol

    async def wait_ready(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        """Until the worker serves (a SIGTERM before that would kill it without a drain)."""
        if self.reader is not None:
            await asyncio.wait_for(asyncio.shield(self.reader.ready), timeout_s)

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)

    async def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(TimeoutError):
            await self.wait_ready()
        self.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            logger.error("worker %d did not stop in %.0fs: killing it", self.index, STOP_TIMEOUT_S)
            self.process.kill()
            await self.process.wait()
        if self.reader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.reader.closed, 5.0)


class Supervisor:
    def __init__(self, config: Config, workers: list[Worker]) -> None:
        self.config = config
        self.workers = workers
        self.bound = [(s.kind, s.host, s.port) for s in workers[0].sockets]
        self.stopping = False
        self.health: HealthServer | None = None
        self.http: list[HealthServer] = []
        self.scrape: HealthServer | None = None  # metrics.scrape_listen

    async def watch(self, worker: Worker) -> None:
        """Restart a worker that exits on its own."""
        while True:
            assert worker.process is not None
            code = await worker.process.wait()
            if self.stopping:
                return
            logger.error("worker %d exited with status %s: restarting it", worker.index, code)
            await asyncio.sleep(RESTART_DELAY_S)
            if self.stopping:
                return
            await worker.start()

    def stats(self) -> dict[str, float]:
        """The workers' last reported stats, summed (counters restart with a restarted worker)."""
        total: dict[str, float] = {"workers": len(self.workers)}
        for worker in self.workers:
            if worker.reader is not None:
                for key, value in worker.reader.stats.items():
                    if key.startswith("forward_spool_oldest_age_s"):  # an age: the oldest's
                        total[key] = max(total.get(key, 0), value)
                    else:
                        total[key] = total.get(key, 0) + value
        return total

    def ready(self) -> tuple[bool, str]:
        serving = [w for w in self.workers if w.reader is not None and w.reader.ready.done()]
        if len(serving) < len(self.workers):
            return False, f"{len(serving)} of {len(self.workers)} workers serving"
        unusable = sorted(
            key.partition("|")[2]
            for key, value in self.stats().items()
            if key.startswith("forward_spool_unusable|") and value
        )
        if unusable:
            return False, "forward " + ", ".join(unusable) + ": spool directory unusable"
        return log_dir_writable(self.config.output.log_dir)

    def forward(self, signum: int) -> None:
        for worker in self.workers:
            worker.signal(signum)


async def _stand_by(config: Config) -> int:
    """Wait for the state dir, ready meanwhile: the sockets are bound, and the old process is
    only stopped (releasing the state dir) once this pod is Ready."""
    standing_by = health_server(config, dict, lambda: (True, "ready: bound, taking over"))
    await start_health(standing_by)
    try:
        return await wait_for_state(config.state_dir)
    finally:
        await stop_health(standing_by)


async def supervise(
    config: Config,
    *,
    shutdown: Shutdown,
    on_ready: Callable[[Any], None] | None = None,
    signals: Signals | None = None,
) -> None:
    loop = asyncio.get_running_loop()
    # bound first: beside an old supervisor (a rolling update) the new sockets join the groups
    # and take over as the old ones close, so nothing is refused; what reaches them before
    # the workers run waits in them. The state dir is taken before any worker opens its spools.
    socket_sets = bind_listeners(config.listen, copies=config.workers)
    lock = try_lock_state(config.state_dir)
    if lock is None:
        lock = await _stand_by(config)
    registry, announcer = open_registry(config)
    workers = [Worker(i, config, sockets, registry) for i, sockets in enumerate(socket_sets)]
    supervisor = Supervisor(config, workers)
    if signals is not None:
        signals.on_hup = lambda: supervisor.forward(signal.SIGHUP)
    background = [
        loop.create_task(registry.run_saver()),
        loop.create_task(announcer.run(registry)),
        loop.create_task(remove_expired_forever(registry, config)),
    ]
    try:
        for worker in workers:
            await worker.start()
        await asyncio.gather(*(w.wait_ready() for w in workers))
        background += [loop.create_task(supervisor.watch(w)) for w in workers]
        for kind, host, port in supervisor.bound:
            logger.info(
                "listening on %s %s:%d (%d workers)", kind, host or "0.0.0.0", port, len(workers)
            )
        inactive_after_s = config.children.inactive_after_s
        health = health_server(
            config,
            lambda: {**supervisor.stats(), **registry_stats(registry, inactive_after_s)},
            supervisor.ready,
            registry,
        )
        await start_health(health)
        supervisor.health = main_health(health)
        supervisor.http = health
        supervisor.scrape = next((h for h in health if h.metrics_only), None)
        if on_ready is not None:
            on_ready(supervisor)
        await shutdown()
        logger.info("shutting down %d workers", len(workers))
    finally:
        await stop_health(supervisor.http)
        supervisor.stopping = True
        # our copies of the TCP sockets go first: each leaves its group when its worker has
        # drained and closed it, and new connections then wait in the backlog of the process
        # that bound beside us. The UDP copies stay to the end: that process's sockets would
        # get the datagrams before its workers read them, more than its buffers hold.
        for sockets in socket_sets:
            close_all([s for s in sockets if s.kind != "udp"])
        await asyncio.gather(*(w.stop() for w in workers))
        await announcer.settle(config.children.hook_timeout_s)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        registry.close()
        release_state(lock)
        for sockets in socket_sets:
            close_all([s for s in sockets if s.kind == "udp"])
