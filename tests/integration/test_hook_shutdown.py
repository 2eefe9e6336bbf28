"""A real server stopping while a registration hook runs, its grandchild holding the hook's pipes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import ServerProcess, send_udp

HOOK_TIMEOUT_S = 3.0  # longer than the test takes to send SIGTERM: the hook is in flight
# the hook never ends; a grandchild outside its process group (setsid) holds its stderr
# (it writes its own pid once it has its own session)
ESCAPE = 'setsid sh -c "echo \\$\\$ > $1; exec sleep 60"'
HANGING_HOOK = ["sh", "-c", f"{ESCAPE} & cat > /dev/null; sleep 60", "sh"]


@pytest.mark.timeout(60)
def test_sigterm_during_a_hanging_hook_stops_within_the_hook_timeout(
    tmp_path: Path, server_process: Callable[..., ServerProcess]
) -> None:
    pid_file = tmp_path / "sleeper.pid"
    config = tmp_path / "hook.toml"
    hook = json.dumps([*HANGING_HOOK, str(pid_file)])  # a JSON array is a TOML array
    config.write_text(f"[children]\nhook_command = {hook}\nhook_timeout_s = {HOOK_TIMEOUT_S}\n")
    server = server_process("--config", str(config))
    try:
        send_udp(server.port, [b"<13>Jan  5 10:11:12 h app: hi"], source="127.0.0.5")
        deadline = time.monotonic() + 10
        while not (pid_file.exists() and pid_file.read_text().strip()):
            assert time.monotonic() < deadline, "the hook did not start"
            time.sleep(0.02)
        started = time.monotonic()
        # the drain, the hook's settle time (hook_timeout_s), then nothing waits on the hook
        assert server.stop(signal.SIGTERM, timeout_s=HOOK_TIMEOUT_S + 10) == 0
        assert time.monotonic() - started < HOOK_TIMEOUT_S + 5
    finally:
        if pid_file.exists() and pid_file.read_text().strip():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)


@pytest.mark.timeout(60)
def test_a_hook_that_exits_leaving_a_sleeper_on_its_pipe_succeeds_and_the_sleeper_dies(
    tmp_path: Path, server_process: Callable[..., ServerProcess]
) -> None:
    """The hook exits 0 at once, its background sleeper holding its stderr: it used to count as
    timed out (the runner waited for the pipe) and be retried for ever."""
    pid_file = tmp_path / "sleeper.pid"
    config = tmp_path / "hook.toml"
    hook = json.dumps(
        ["sh", "-c", 'cat > /dev/null; sleep 60 & echo $! > "$1"', "sh", str(pid_file)]
    )
    config.write_text(f"[children]\nhook_command = {hook}\nhook_timeout_s = 10\n")
    server = server_process("--config", str(config))
    try:
        send_udp(server.port, [b"<13>Jan  5 10:11:12 h app: hi"], source="127.0.0.6")
        deadline = time.monotonic() + 5  # well below hook_timeout_s
        while "127.0.0.6" not in _announced(server):
            assert time.monotonic() < deadline, f"not announced: {server.log}"
            time.sleep(0.05)
        sleeper = int(pid_file.read_text())
        while _running(sleeper):
            assert time.monotonic() < deadline, "the hook's leftover sleeper was not killed"
            time.sleep(0.02)
        assert server.stop() == 0
    finally:
        if pid_file.exists() and pid_file.read_text().strip():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)


def _announced(server: ServerProcess) -> set[str]:
    from relay.children.registry import load_children

    return {c.ip for c in load_children(server.state_dir) if c.announced}


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(") ")[2][0] != "Z"  # a zombie holds nothing any more
