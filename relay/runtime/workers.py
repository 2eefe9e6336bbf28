"""Several worker processes on one port (SO_REUSEPORT), and the supervisor that owns the registry.

Each worker runs its own listeners, pipeline and file sink on its own copy of the sockets; the
kernel hashes a UDP sender (address and port) to one socket, so a sender's messages stay in
order, and spreads TCP connections. Workers append whole lines with O_APPEND, so two workers may
share a file. The supervisor binds the sockets (and keeps them, so a worker that dies is
restarted on the same sockets without losing what queued meanwhile), owns the child registry and
its hooks, and forwards SIGHUP/SIGTERM. A dead worker is replaced at once by a standby process
started ahead (interpreter and imports done, waiting to be told which worker it is), and while
it is down the kernel steers its senders to a live worker (relay.ingest.steering). Workers
report their sources to it over a pipe: `(ip, last hostname, last seen, messages)` per source,
every REPORT_INTERVAL_S and at exit.
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
from relay.ingest.listeners import BoundSocket, bind_listeners, close_all, steer_around
from relay.ops.metrics import HealthServer
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
from relay.runtime.server import Server

logger = logging.getLogger(__name__)

REPORT_INTERVAL_S = 0.2
RESTART_DELAY_S = 1.0  # before a restart after two deaths in a row within CRASH_LOOP_S of start
CRASH_LOOP_S = 2.0
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


def await_role(specs: list[str]) -> tuple[int, list[str]]:
    """A standby: block until the supervisor names the worker to become (a line on stdin),
    then keep that worker's sockets (`INDEX:kind,fd,host,port` specs) and close the others.
    EOF (the supervisor stopped or no longer needs a standby) exits quietly."""
    # tell the supervisor the start's work is done (it waits for that before it calls itself
    # ready, so that the standby's start does not compete with the first messages)
    sys.stdout.write("standby\n")
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    line = sys.stdin.readline()
    if not line.strip():
        raise SystemExit(0)
    index = int(line)
    mine = []
    for spec in specs:
        owner, _, rest = spec.partition(":")
        if int(owner) == index:
            mine.append(rest)
        else:
            os.close(int(rest.split(",")[1]))
    return index, mine


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


def _worker_env() -> dict[str, str]:
    return {**os.environ, SUPERVISOR_ENV: str(os.getpid())}


class Standby:
    """A worker process started ahead of need: the interpreter is up and the code imported
    (about 0.5 s of a start), it holds every worker's sockets and waits on stdin for the index
    of the worker it is to replace; then it serves within milliseconds."""

    def __init__(self, config: Config, socket_sets: list[list[BoundSocket]], registry: Registry):
        self.config = config
        self.socket_sets = socket_sets
        self.registry = registry
        self.process: asyncio.subprocess.Process | None = None
        self.reader: _ReportReader | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        args = [sys.executable, "-m", "relay", "worker", "--standby", "--index", "-1",
                "--report-fd", str(write_fd)]  # fmt: skip
        fds = [write_fd]
        for index, sockets in enumerate(self.socket_sets):
            for s in sockets:
                args += ["--socket", f"{index}:{s.kind},{s.sock.fileno()},{s.host},{s.port}"]
                fds.append(s.sock.fileno())
        env = {**_worker_env(), CONFIG_ENV: msgspec.json.encode(self.config).decode()}
        try:
            self.process = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                pass_fds=fds,
                env=env,
            )
        finally:
            os.close(write_fd)
        _, protocol = await loop.connect_read_pipe(
            lambda: _ReportReader(self.registry), os.fdopen(read_fd, "rb")
        )
        self.reader = protocol

    async def wait_idle(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        """Until the standby has done its imports and waits (or has died: then no standby)."""
        if self.process is not None and self.process.stdout is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.stdout.readline(), timeout_s)

    def take(self, index: int) -> tuple[asyncio.subprocess.Process, _ReportReader] | None:
        """The standby becomes worker `index` (None: there is no live standby)."""
        process, reader = self.process, self.reader
        self.process = self.reader = None
        if process is None or reader is None or process.returncode is not None:
            return None
        assert process.stdin is not None
        process.stdin.write(b"%d\n" % index)
        return process, reader

    async def stop(self) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.returncode is None:
            process.kill()  # it serves nothing and holds no state: no need to wait for it
        await process.wait()


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
        env = {**_worker_env(), CONFIG_ENV: msgspec.json.encode(self.config).decode()}
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

    def adopt(self, standby: Standby) -> bool:
        """Become the standby process (False: there was none to take)."""
        taken = standby.take(self.index)
        if taken is None:
            return False
        self.process, self.reader = taken
        return True

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
    def __init__(self, config: Config, workers: list[Worker], standby: Standby) -> None:
        self.config = config
        self.workers = workers
        self.standby = standby
        self.bound = [(s.kind, s.host, s.port) for s in workers[0].sockets]
        self.stopping = False
        self.health: HealthServer | None = None
        self.http: list[HealthServer] = []
        self.scrape: HealthServer | None = None  # metrics.scrape_listen
        self.down: set[int] = set()  # workers not serving: their senders go to live ones
        self._standby_task: asyncio.Task[None] | None = None

    def steer(self) -> None:
        steer_around(self.workers[0].sockets, len(self.workers), self.down)

    async def watch(self, worker: Worker) -> None:
        """Replace a worker that exits on its own: by the standby at once (a worker dying again
        right after its restart waits RESTART_DELAY_S first: a crash loop must not spin)."""
        loop = asyncio.get_running_loop()
        quick_deaths = 0
        while True:
            assert worker.process is not None
            started = loop.time()
            code = await worker.process.wait()
            if self.stopping:
                return
            died = loop.time()
            self.down.add(worker.index)
            self.steer()
            logger.error("worker %d exited with status %s: restarting it", worker.index, code)
            quick_deaths = quick_deaths + 1 if died - started < CRASH_LOOP_S else 0
            if quick_deaths > 1:  # twice in a row: a crash loop
                await asyncio.sleep(RESTART_DELAY_S)
                if self.stopping:
                    return
            if self._standby_task is not None:
                await self._standby_task  # a standby still starting is still the quickest
            if not worker.adopt(self.standby):
                await worker.start()
            with contextlib.suppress(TimeoutError):
                await worker.wait_ready()
            self.down.discard(worker.index)
            self.steer()
            logger.info("worker %d serving again after %.3fs", worker.index, loop.time() - died)
            # the next standby only now: its start does not delay this one's
            self._standby_task = loop.create_task(self.standby.start())

    async def stop_standby(self) -> None:
        if self._standby_task is not None:
            with contextlib.suppress(Exception):
                await self._standby_task
        await self.standby.stop()

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
    watch = pod_watch(config)
    registry, announcer = open_registry(config, watch)
    workers = [Worker(i, config, sockets, registry) for i, sockets in enumerate(socket_sets)]
    supervisor = Supervisor(config, workers, Standby(config, socket_sets, registry))
    if signals is not None:
        signals.on_hup = lambda: supervisor.forward(signal.SIGHUP)
    background = [
        loop.create_task(registry.run_saver()),
        loop.create_task(announcer.run(registry)),
        loop.create_task(remove_expired_forever(registry, config)),
    ]
    if watch is not None:  # the registry's loop resolves the workers' reports
        background.append(loop.create_task(watch.run()))
    try:
        for worker in workers:
            await worker.start()
        await supervisor.standby.start()
        await asyncio.gather(*(w.wait_ready() for w in workers), supervisor.standby.wait_idle())
        background += [loop.create_task(supervisor.watch(w)) for w in workers]
        for kind, host, port in supervisor.bound:
            logger.info(
                "listening on %s %s:%d (%d workers)", kind, host or "0.0.0.0", port, len(workers)
            )
        inactive_after_s = config.children.inactive_after_s
        health = health_server(
            config,
            lambda: {
                **supervisor.stats(),
                **registry_stats(registry, inactive_after_s),
                **kubernetes_stats(registry, watch),
            },
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
        # the standby holds a copy of every socket: stopped first, or those would stay in
        # their groups after our copies and the workers' are closed
        await supervisor.stop_standby()
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
