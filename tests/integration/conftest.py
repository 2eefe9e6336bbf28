"""Integration fixtures: a real server on loopback, in-process (`running`) or as a process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from relay.config import Config, load_config
from relay.runtime.start import serve

WORKERS = [1]  # set per test by the `workers` fixture


@pytest.fixture(autouse=True, params=[1, 2], ids=["workers1", "workers2"])
def workers(request: pytest.FixtureRequest) -> Iterator[int]:
    """Every integration test runs with one process and with two SO_REUSEPORT workers."""
    WORKERS[0] = request.param
    yield request.param
    WORKERS[0] = 1


class Running:
    """A server started by `serve()` in this event loop, stopped through the injected trigger."""

    def __init__(self, server: Any, log_dir: Path, state_dir: Path) -> None:
        self.server = server
        self.log_dir = log_dir
        self.state_dir = state_dir
        self.host = server.bound[0][1] or "127.0.0.1"
        self.port = server.bound[0][2]

    def file(self, ip: str) -> Path:
        return self.log_dir / f"ceelog-{ip}.log"


@asynccontextmanager
async def running_server(
    tmp_path: Path, overrides: dict[str, Any] | None = None
) -> AsyncIterator[Running]:
    log_dir, state_dir = tmp_path / "logs", tmp_path / "state"
    config = load_config(
        None,
        {
            "listen.addresses": ["127.0.0.1:0"],
            "output.log_dir": str(log_dir),
            "state_dir": str(state_dir),
            "output.flush_interval_s": 0.05,
            "metrics.listen": "127.0.0.1:0",
            "workers": WORKERS[0],
            **(overrides or {}),
        },
    )
    stop = asyncio.Event()
    ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(config, shutdown=stop.wait, on_ready=ready.set_result))
    done, _ = await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # raises the start-up error
    try:
        yield Running(ready.result(), log_dir, state_dir)
    finally:
        stop.set()
        await task


def read_lines(path: Path) -> list[dict[str, str]]:
    """The whole lines of a ceelog file. A read beside a running server may end inside a write
    in progress (a reader is not serialised with an O_APPEND write): that unterminated tail is
    not a line yet. Every line before it must parse."""
    if not path.exists():
        return []
    *lines, _in_progress = path.read_bytes().split(b"\n")
    return [json.loads(line.decode("utf-8", "surrogateescape"))["ceelog"] for line in lines]


async def wait_for_lines(path: Path, count: int, timeout_s: float = 10.0) -> list[dict[str, str]]:
    deadline = time.monotonic() + timeout_s
    while True:
        lines = read_lines(path)
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        await asyncio.sleep(0.05)


def send_udp(
    port: int, payloads: list[bytes], source: str = "127.0.0.1", host: str = "127.0.0.1"
) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        for payload in payloads:
            sock.sendto(payload, (host, port))


def send_tcp(port: int, data: bytes, source: str = "127.0.0.1", host: str = "127.0.0.1") -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((source, 0))
        sock.connect((host, port))
        sock.sendall(data)


def octet(payloads: list[bytes]) -> bytes:
    return b"".join(b"%d %s" % (len(p), p) for p in payloads)


def lf(payloads: list[bytes]) -> bytes:
    return b"".join(p + b"\n" for p in payloads)


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    while True:
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port


class ServerProcess:
    """`python -m relay serve` as a child process (for signals and restarts)."""

    def __init__(self, tmp_path: Path, *extra: str, config: Config | None = None) -> None:
        self.log_dir = tmp_path / "logs"
        self.state_dir = tmp_path / "state"
        self.port = free_port()
        self.args = [
            sys.executable, "-m", "relay", "serve",
            "--listen", f"127.0.0.1:{self.port}",
            "--log-dir", str(self.log_dir), "--state-dir", str(self.state_dir),
            "--workers", str(WORKERS[0]), "--metrics", "127.0.0.1:0", *extra,
        ]  # fmt: skip
        self.stderr_path = tmp_path / f"server-{self.port}.err"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        """Start (or start again: the log is appended to) and wait until it listens."""
        started = self.log.count("listening on udp") if self.stderr_path.exists() else 0
        self.stderr = open(self.stderr_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.args, stderr=self.stderr)
        deadline = time.monotonic() + 15
        while self.log.count("listening on udp") <= started:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {self.stderr_path.read_text()}")
            time.sleep(0.02)
        return self

    def send_signal(self, signum: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signum)

    def stop(self, signum: int = signal.SIGTERM, timeout_s: float = 15) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        code = self.proc.wait(timeout_s)
        self.stderr.close()
        return code

    @property
    def log(self) -> str:
        return self.stderr_path.read_text()

    def file(self, ip: str) -> Path:
        return self.log_dir / f"ceelog-{ip}.log"

    def metrics(self) -> dict[str, float]:
        """The server's /metrics (with workers: the supervisor's sum), `name{labels}` -> value."""
        deadline = time.monotonic() + 10  # the supervisor logs it after the workers listen
        while not (found := re.findall(r"metrics and health on (http://\S+/metrics)", self.log)):
            assert time.monotonic() < deadline, f"no metrics URL in the server's log:\n{self.log}"
            time.sleep(0.05)
        with urllib.request.urlopen(found[-1], timeout=5) as response:
            text = response.read().decode()
        samples = (line.rsplit(" ", 1) for line in text.splitlines() if line[:1] not in "#")
        return {name: float(value) for name, value in samples}


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def start(*extra: str, path: Path | None = None) -> ServerProcess:
        process = ServerProcess(path or tmp_path, *extra).start()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.proc is not None and process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait()
            process.stderr.close()
