"""Entry point: resolve the listen addresses, then serve in this process or supervise workers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import uvloop

from relay.config import Config
from relay.runtime.common import (
    FD_HEADROOM,
    Shutdown,
    Signals,
    raise_open_file_limit,
    resolve_listen,
)
from relay.runtime.server import Server, serve_here
from relay.runtime.workers import supervise


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
            await supervise(config, shutdown=shutdown, on_ready=on_ready, signals=signals)
        else:
            await serve_here(config, shutdown, on_ready, signals)
    finally:
        if signals is not None:
            signals.remove()


def run(config: Config) -> None:
    """Blocking entry point for the CLI."""
    raise_open_file_limit(
        config.output.max_open_files + config.listen.max_connections + FD_HEADROOM
    )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(config))
