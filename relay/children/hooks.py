"""Registration hooks: tell something outside (a command, a URL) about each new child server.

Each child is retried on its own schedule until every configured hook has succeeded, so one
failing child never holds up the others; reception never waits for a hook.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import random
import signal
import ssl
from collections.abc import Awaitable, Callable
from typing import cast
from urllib.parse import urlsplit

import msgspec

from relay.children.registry import FAILURE_LOG_INTERVAL_S, Child, RateLimitedLog, Registry
from relay.config import check_hook_url

logger = logging.getLogger(__name__)

_encoder = msgspec.json.Encoder()
_Hook = Callable[[bytes], Awaitable[str | None]]

HOOK_CONCURRENCY = 4
HOOK_CLOSE_TIMEOUT_S = 1.0
STDERR_TAIL_BYTES = 300


class Announcer:
    """Runs the registration hooks for each child the registry hands out, until they succeed.

    `command` gets the child's JSON on stdin (success: exit status 0); `url` gets it as an HTTP
    POST (success: 2xx). Each child retries on its own schedule (exponential backoff with
    jitter, capped at `backoff_max_s`), so a failing child never holds up the others; at most
    `concurrency` deliveries run at once. Failures are logged at most once a minute.
    """

    def __init__(
        self,
        *,
        command: list[str] | None = None,
        url: str | None = None,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 300.0,
        timeout_s: float = 10.0,
        concurrency: int = HOOK_CONCURRENCY,
    ) -> None:
        if url is not None:
            check_hook_url(url)
        self._command = command
        self._url = url
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._timeout_s = timeout_s
        self._slots = asyncio.Semaphore(concurrency)
        self._failures = RateLimitedLog(FAILURE_LOG_INTERVAL_S)
        self._in_progress: set[str] = set()
        self._delivering = 0

    async def run(self, registry: Registry) -> None:
        hooks = self._hooks()
        async with asyncio.TaskGroup() as tasks:
            while True:
                child = await registry.next_unannounced()
                if not hooks:
                    registry.mark_announced(child.key)
                elif child.key not in self._in_progress:
                    self._in_progress.add(child.key)
                    tasks.create_task(self._announce(registry, child, hooks))

    async def settle(self, timeout_s: float) -> None:
        """Let deliveries already under way finish (a clean stop must not lose their result and
        announce those children again at the next start); children waiting to retry don't
        count."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self._delivering and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)

    def _hooks(self) -> dict[str, _Hook]:
        hooks: dict[str, _Hook] = {}
        if self._command:
            hooks["command"] = self._run_command
        if self._url is not None:
            hooks["url"] = self._post
        return hooks

    async def _announce(self, registry: Registry, child: Child, hooks: dict[str, _Hook]) -> None:
        body = _encoder.encode(child)
        pending = dict(hooks)  # a hook that succeeded is not run again for this child
        attempt = 0
        while pending:
            attempt += 1
            async with self._slots:
                self._delivering += 1
                try:
                    errors = {
                        name: await _attempt(deliver, body) for name, deliver in pending.items()
                    }
                finally:
                    self._delivering -= 1
            pending = {name: pending[name] for name, error in errors.items() if error is not None}
            if pending:
                delay = self._delay(attempt)
                reasons = "; ".join(f"{n}: {errors[n]}" for n in pending)
                self._failures.warning(
                    "registration hook for child server %s failed (attempt %d, %s);"
                    " retrying in %.1fs",
                    child.ip,
                    attempt,
                    reasons,
                    delay,
                )
                await asyncio.sleep(delay)
        registry.mark_announced(child.key)
        self._in_progress.discard(child.key)
        if attempt > 1:
            logger.info(
                "registration hook for child server %s succeeded (attempt %d)", child.ip, attempt
            )

    def _delay(self, attempt: int) -> float:
        base = min(self._backoff_max_s, self._backoff_initial_s * 2.0 ** min(attempt - 1, 60))
        return random.uniform(base / 2, base)  # jitter: children failing together spread out

    async def _run_command(self, body: bytes) -> str | None:
        assert self._command
        return await run_hook_command(self._command, body, self._timeout_s)

    async def _post(self, body: bytes) -> str | None:
        assert self._url is not None
        target = urlsplit(self._url)
        tls = ssl.create_default_context() if target.scheme == "https" else None
        port = target.port or (443 if tls else 80)
        # asyncio.timeout, not wait_for: 3.11's wait_for may swallow a cancellation that comes
        # as the connection is made, and the stopping server then waits on this hook's retries
        async with asyncio.timeout(self._timeout_s):
            reader, writer = await asyncio.open_connection(target.hostname, port, ssl=tls)
        try:
            async with asyncio.timeout(self._timeout_s):
                writer.write(_post_request(self._url, body))
                await writer.drain()
                status_line = await reader.readline()
        finally:
            writer.close()
            try:
                async with asyncio.timeout(HOOK_CLOSE_TIMEOUT_S):
                    await writer.wait_closed()
            except (OSError, TimeoutError):
                writer.transport.abort()  # a peer that does not read or close: drop it
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            return f"expecting an HTTP status line, got {status_line[:80]!r}"
        status = int(parts[1])
        return None if 200 <= status < 300 else f"HTTP status {status}"


async def _attempt(deliver: _Hook, body: bytes) -> str | None:
    try:
        return await deliver(body)
    except Exception as exc:  # any failure of a hook is retried, never fatal
        return f"{type(exc).__name__}: {exc}"


class _HookProcess(asyncio.SubprocessProtocol):
    """What a hook command tells us: the tail of its stderr, its exit, its stderr closing.

    asyncio's `Process.wait()` (and so `communicate()`) only returns once every pipe is closed,
    and a grandchild the hook left running keeps them open: the runner waits on these futures
    instead, each under a bound."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[int] = loop.create_future()
        self.stderr_closed: asyncio.Future[None] = loop.create_future()
        self.stderr = b""
        self._transport: asyncio.BaseTransport | None = None

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self.stderr = (self.stderr + data)[-STDERR_TAIL_BYTES:]

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 2 and not self.stderr_closed.done():
            self.stderr_closed.set_result(None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def process_exited(self) -> None:
        code = cast(asyncio.SubprocessTransport, self._transport).get_returncode()
        if not self.exited.done():
            self.exited.set_result(-1 if code is None else code)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.stderr_closed.done():
            self.stderr_closed.set_result(None)


async def run_hook_command(command: list[str], body: bytes, timeout_s: float) -> str | None:
    """Run `command` with `body` on stdin: None if it exits 0 within `timeout_s`, else why not.

    Every wait is bounded and nothing outlives the attempt: the command runs in its own process
    group (session), which is killed (SIGKILL) once the command has exited, timed out or been
    cancelled, so whatever it left running there dies with it; then our ends of its pipes are
    closed. A grandchild that left the group (setsid) cannot be reached by the kill, but it
    can no longer hold the runner up: its pipe is closed under it after HOOK_CLOSE_TIMEOUT_S.
    """
    loop = asyncio.get_running_loop()
    creating = asyncio.ensure_future(
        loop.subprocess_exec(
            _HookProcess,
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group: killpg reaches its children
        )
    )
    try:
        # shielded: a cancelled creation would wait for the pipes (asyncio's own cleanup)
        transport, hook = await asyncio.shield(creating)
    except asyncio.CancelledError:
        creating.add_done_callback(_abandon)  # kill it as soon as it exists, waiting for nothing
        raise
    try:
        return await _wait_for_hook(transport, hook, body, timeout_s)
    finally:
        _kill_group(transport)
        # SIGKILLed, it exits at once: wait for that (bounded, even when cancelled) so that it
        # is reaped while the loop still runs
        try:
            await asyncio.wait([hook.exited], timeout=HOOK_CLOSE_TIMEOUT_S)
        finally:
            transport.close()


async def _wait_for_hook(
    transport: asyncio.SubprocessTransport, hook: _HookProcess, body: bytes, timeout_s: float
) -> str | None:
    stdin = cast(asyncio.WriteTransport | None, transport.get_pipe_transport(0))
    if stdin is not None:
        with contextlib.suppress(OSError):  # a hook that exits without reading its stdin
            stdin.write(body)
            stdin.close()  # EOF: a hook reading all of stdin (`body=$(cat)`) goes on
    try:
        async with asyncio.timeout(timeout_s):
            code = await asyncio.shield(hook.exited)
    except TimeoutError:
        return f"command timed out after {timeout_s:g}s"
    _kill_group(transport)  # the hook is done: its leftovers go, and with them their pipe ends
    await asyncio.wait([hook.stderr_closed], timeout=HOOK_CLOSE_TIMEOUT_S)
    if code == 0:
        return None
    tail = hook.stderr.decode("utf-8", "backslashreplace").strip()
    return f"command exited with status {code}" + (f": {tail}" if tail else "")


def _kill_group(transport: asyncio.SubprocessTransport) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(transport.get_pid(), signal.SIGKILL)


def _end(transport: asyncio.SubprocessTransport) -> None:
    """Kill the group and close our pipe ends; waits for nothing (the loop reaps the child)."""
    _kill_group(transport)
    transport.close()


def _abandon(creating: asyncio.Future[tuple[asyncio.SubprocessTransport, _HookProcess]]) -> None:
    if not creating.cancelled() and creating.exception() is None:
        _end(creating.result()[0])


def _post_request(url: str, body: bytes) -> bytes:
    target = urlsplit(url)
    path = (target.path or "/") + (f"?{target.query}" if target.query else "")
    host = target.netloc.rpartition("@")[2]
    headers = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}",
        "User-Agent: plura-relay",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if target.username is not None:
        credentials = f"{target.username}:{target.password or ''}".encode()
        headers.append(f"Authorization: Basic {base64.b64encode(credentials).decode()}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body
