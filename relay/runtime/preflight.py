"""What a config needs of this host before `serve` can use it: the directories it writes, the TLS
files it loads, the hook it runs. `check-config` and `serve` both run it, so what would stop
`serve` is found by `check-config` first, as one line naming the key and the path.

A full disk is not checked on purpose: the server starts, counts what it cannot write, and
/readyz says why, until space returns.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from relay.config import Config, ConfigError
from relay.tls import client_context, server_context


def check_environment(config: Config) -> None:
    """Raises ConfigError naming the key and the path that `serve` could not use."""
    problem = (
        _check_dir("output.log_dir", Path(config.output.log_dir))
        or _check_dir("state_dir", Path(config.state_dir))
        or _check_routes(config)
        or _check_tls(config)
        or _check_hook(config)
    )
    if problem is not None:
        raise ConfigError(problem)


def _check_dir(key: str, path: Path) -> str | None:
    """A directory we may create files in, or one that can be created (the nearest existing
    ancestor is a directory we may create in)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{key}: {existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):  # also EROFS, for root too
        what = "" if existing == path else f" (to create {path})"
        return f"{key}: cannot write in {existing}{what}: permission denied or read-only"
    return None


def _check_routes(config: Config) -> str | None:
    for index, route in enumerate(config.route):
        target = Path(config.output.log_dir) / route.file
        if route.action != "drop" and target.is_dir():
            return f"route[{index}].file: {target} is a directory"
    return None


def _check_tls(config: Config) -> str | None:
    """Load every certificate, key and CA file now, as the listeners and targets will."""
    try:
        if config.listen.tls.addresses or config.listen.relp.tls_addresses:
            server_context(config.listen.tls)
    except ValueError as exc:
        return f"listen.tls: {exc}"
    for index, forward in enumerate(config.forward):
        if forward.protocol in ("tls", "relp-tls"):
            try:
                client_context(forward.tls)
            except ValueError as exc:
                return f"forward[{index}].tls: {exc}"
    return None


def _check_hook(config: Config) -> str | None:
    command = config.children.hook_command
    if command and shutil.which(command[0]) is None:
        return f"children.hook_command: {command[0]!r} is not an executable (nor found in PATH)"
    return None
