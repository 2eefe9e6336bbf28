"""relay.children.registry: the child-server registry, its file, and the registration hooks.

Real files in tmp_path, real hook subprocesses (`sh`), a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.children.hooks import Announcer
from relay.children.registry import Child, Registry, format_table, load_children

T0 = 1_700_000_000.0
REPO = Path(__file__).resolve().parents[1]
NEW_LINE = "new child server"

# Appends the child's JSON to $1 as one line, in one write (hooks run concurrently).
APPEND_HOOK = ["sh", "-c", 'body=$(cat); printf "%s\\n" "$body" >> "$1"', "sh"]


async def eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(registry: Registry, announcer: Announcer | None = None) -> AsyncIterator[None]:
    """The server's wiring: saver and announcer tasks, then close() at shutdown."""
    tasks = [asyncio.create_task(registry.run_saver())]
    if announcer is not None:
        tasks.append(asyncio.create_task(announcer.run(registry)))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results), results
        registry.close()


def hook_lines(path: Path) -> list[Child]:
    if not path.exists():
        return []
    lines = path.read_bytes().splitlines()
    return [msgspec.json.decode(line, type=Child) for line in lines if line]


def new_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(NEW_LINE)]


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay.children.registry")
    caplog.set_level(logging.INFO, logger="relay.children.hooks")


# -- observe ----------------------------------------------------------------------------------


def test_observe_registers_and_updates(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.observe("10.244.2.5", b"pod-a", T0)
    registry.observe("10.244.2.6", b"pod-b", T0 + 1, count=10)
    registry.observe("10.244.2.5", b"pod-a2", T0 + 2)
    registry.observe("10.244.2.5", b"pod-a3", T0 + 3, count=5)

    assert registry.count == 2
    assert registry.children() == [
        Child("10.244.2.5", T0, T0 + 3, "pod-a3", 7, announced=False),
        Child("10.244.2.6", T0 + 1, T0 + 1, "pod-b", 10, announced=False),
    ]
    assert registry.get("10.244.2.6") == Child("10.244.2.6", T0 + 1, T0 + 1, "pod-b", 10, False)
    assert registry.get("10.9.9.9") is None


def test_invalid_utf8_hostname_is_backslash_escaped(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.observe("10.0.0.1", b"h\xffst\xc3", T0)
    registry.close()
    assert load_children(tmp_path)[0].hostname == "h\\xffst\\xc3"


def test_on_new_is_called_once_per_ip(tmp_path: Path) -> None:
    seen: list[Child] = []
    registry = Registry(tmp_path, on_new=seen.append)
    for i in range(3):
        registry.observe("10.0.0.1", b"a", T0 + i)
        registry.observe("10.0.0.2", b"b", T0 + i)
    assert [c.ip for c in seen] == ["10.0.0.1", "10.0.0.2"]
    assert seen[0] == Child("10.0.0.1", T0, T0, "a", 1, False)


def test_active_counts_recent_children(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.observe("10.0.0.1", b"a", T0)
    registry.observe("10.0.0.2", b"b", T0 + 100)
    registry.observe("10.0.0.3", b"c", T0 + 250)
    assert registry.count == 3
    assert registry.active(T0 + 300, inactive_after_s=60) == 1
    assert registry.active(T0 + 300, inactive_after_s=200) == 2
    assert registry.active(T0 + 300, inactive_after_s=1000) == 3


# -- persistence ------------------------------------------------------------------------------


def test_registry_survives_a_restart(tmp_path: Path) -> None:
    first = Registry(tmp_path)
    first.observe("10.0.0.1", b"a", T0)
    first.observe("10.0.0.2", b"b", T0 + 1, count=3)
    first.observe("10.0.0.1", b"a2", T0 + 2)
    first.close()

    second = Registry(tmp_path)
    assert second.children() == first.children()
    second.observe("10.0.0.1", b"a3", T0 + 3)
    assert second.get("10.0.0.1") == Child("10.0.0.1", T0, T0 + 3, "a3", 3, False)


def test_missing_state_dir_is_empty_and_created_on_save(tmp_path: Path) -> None:
    state_dir = tmp_path / "state" / "plura-relay"
    registry = Registry(state_dir)
    assert registry.count == 0
    assert load_children(state_dir) == []
    registry.observe("10.0.0.1", b"a", T0)
    registry.save()
    assert [c.ip for c in load_children(state_dir)] == ["10.0.0.1"]
    assert sorted(p.name for p in state_dir.iterdir()) == ["children.json"]


def test_file_is_json_one_child_per_line_with_previous_version_as_bak(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.observe("10.0.0.1", b"a", T0)
    registry.save()
    registry.observe("10.0.0.2", b"b", T0)
    registry.save()

    text = (tmp_path / "children.json").read_text()
    assert json.loads(text)["version"] == 1
    assert [c["ip"] for c in json.loads(text)["children"]] == ["10.0.0.1", "10.0.0.2"]
    assert len(text.splitlines()) == 4
    backup = json.loads((tmp_path / "children.json.bak").read_text())
    assert [c["ip"] for c in backup["children"]] == ["10.0.0.1"]
    assert not list(tmp_path.glob("*.tmp"))


def test_unchanged_registry_is_not_rewritten(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.observe("10.0.0.1", b"a", T0)
    registry.save()
    inode = (tmp_path / "children.json").stat().st_ino
    registry.save()
    assert (tmp_path / "children.json").stat().st_ino == inode


TORN = [
    pytest.param(b"", id="empty"),
    pytest.param(b'{"version":1,"children":[\n{"ip":"10.0.0.1","first_seen":17', id="truncated"),
    pytest.param(b"\x00" * 4096, id="zeroed-block"),
    pytest.param(b"\xff\xfe garbage", id="garbage"),
    pytest.param(b'{"version":1,"children":[{"ip":7}]}', id="wrong-types"),
    pytest.param(b"[]", id="wrong-shape"),
]


def two_versions(state_dir: Path) -> None:
    """children.json holds 10.0.0.1 and .2; children.json.bak only 10.0.0.1."""
    registry = Registry(state_dir)
    registry.observe("10.0.0.1", b"a", T0)
    registry.save()
    registry.observe("10.0.0.2", b"b", T0)
    registry.close()


@pytest.mark.parametrize("garbage", TORN)
def test_torn_registry_falls_back_to_backup_and_is_set_aside(
    tmp_path: Path, garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    two_versions(tmp_path)
    (tmp_path / "children.json").write_bytes(garbage)

    # a reader (the CLI) recovers the backup without touching the files
    assert [c.ip for c in load_children(tmp_path)] == ["10.0.0.1"]
    assert (tmp_path / "children.json").read_bytes() == garbage

    registry = Registry(tmp_path)
    assert [c.ip for c in registry.children()] == ["10.0.0.1"]
    (aside,) = tmp_path.glob("children.json.corrupt-*")
    assert aside.read_bytes() == garbage
    assert "corrupt" in caplog.text
    assert "restored from backup" in caplog.text

    registry.close()
    assert [c.ip for c in load_children(tmp_path)] == ["10.0.0.1"]
    assert (tmp_path / "children.json").exists()


@pytest.mark.parametrize("garbage", TORN)
def test_torn_registry_without_backup_starts_empty(tmp_path: Path, garbage: bytes) -> None:
    (tmp_path / "children.json").write_bytes(garbage)
    assert load_children(tmp_path) == []
    registry = Registry(tmp_path)
    assert registry.count == 0
    assert len(list(tmp_path.glob("children.json.corrupt-*"))) == 1


def test_corrupt_backup_too_starts_empty(tmp_path: Path) -> None:
    two_versions(tmp_path)
    (tmp_path / "children.json").write_bytes(b"{")
    (tmp_path / "children.json.bak").write_bytes(b"[")
    assert load_children(tmp_path) == []
    assert Registry(tmp_path).count == 0


def test_missing_registry_with_backup_uses_backup(tmp_path: Path) -> None:
    # e.g. a crash after setting a corrupt file aside and before the next save
    two_versions(tmp_path)
    (tmp_path / "children.json").unlink()
    assert [c.ip for c in Registry(tmp_path).children()] == ["10.0.0.1"]


CRASH_DURING_SAVE = """
import os, sys
from pathlib import Path
from relay.children.registry import Registry
registry = Registry(Path(sys.argv[1]))
registry.observe("10.0.0.1", b"a", 1.0)
registry.save()
registry.observe("10.0.0.2", b"b", 2.0)
os.replace = lambda *args: os._exit(9)  # die after the temp file is written, before the rename
registry.save()
"""


def test_crash_during_save_keeps_the_previous_registry(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-c", CRASH_DURING_SAVE, str(tmp_path)]
    assert subprocess.run(cmd, env=env, check=False).returncode == 9
    assert (tmp_path / "children.json.tmp").exists()
    assert [c.ip for c in load_children(tmp_path)] == ["10.0.0.1"]

    registry = Registry(tmp_path)
    registry.observe("10.0.0.3", b"c", T0)
    registry.save()
    assert [c.ip for c in load_children(tmp_path)] == ["10.0.0.1", "10.0.0.3"]


def test_failed_save_leaves_the_file_and_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry(tmp_path)
    registry.observe("10.0.0.1", b"a", T0)
    registry.save()
    before = (tmp_path / "children.json").read_bytes()
    registry.observe("10.0.0.2", b"b", T0)

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", disk_full)
        with pytest.raises(OSError, match="No space"):
            registry.save()
        registry.close()  # logs, does not raise
    assert "cannot save child registry" in caplog.text
    assert (tmp_path / "children.json").read_bytes() == before
    assert new_lines(caplog) == ["new child server 10.0.0.1 (hostname a)",
                                 "new child server 10.0.0.2 (hostname b)"]  # fmt: skip

    registry.close()
    assert [c.ip for c in load_children(tmp_path)] == ["10.0.0.1", "10.0.0.2"]
    assert len(new_lines(caplog)) == 2


def test_reader_never_sees_a_partial_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    registry = Registry(tmp_path)
    registry.observe("10.0.0.0", b"h", T0)
    registry.save()
    seen: list[int] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.append(len(load_children(tmp_path)))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(1, 60):
            registry.observe(f"10.0.{i // 256}.{i % 256}", b"h" * 50, T0)
            registry.save()
    finally:
        stop.set()
        reader.join()
    assert seen and min(seen) >= 1 and seen == sorted(seen)
    assert "corrupt" not in caplog.text


@settings(max_examples=50, deadline=None)
@given(hostnames=st.lists(st.binary(max_size=40), min_size=1, max_size=5))
def test_any_hostname_bytes_round_trip(hostnames: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as state_dir:
        registry = Registry(Path(state_dir))
        for i, hostname in enumerate(hostnames):
            registry.observe(f"10.0.0.{i}", hostname, T0)
        registry.close()
        loaded = [c.hostname for c in load_children(Path(state_dir))]
    assert loaded == [h.decode("utf-8", "backslashreplace") for h in hostnames]


async def test_saver_writes_new_children_then_logs_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry(tmp_path, save_interval_s=0.01, stats_save_interval_s=0.05)
    async with running(registry):
        registry.observe("10.0.0.1", b"a", T0)
        assert new_lines(caplog) == []  # not before the child is on disk
        await eventually(lambda: bool(new_lines(caplog)))
        assert [c.ip for c in load_children(tmp_path)] == ["10.0.0.1"]

        # counters of known children reach the file on the slower stats schedule
        registry.observe("10.0.0.1", b"a2", T0 + 5, count=41)
        await eventually(lambda: load_children(tmp_path)[0].messages == 42)
        assert load_children(tmp_path)[0] == Child("10.0.0.1", T0, T0 + 5, "a2", 42, False)
    assert new_lines(caplog) == ["new child server 10.0.0.1 (hostname a)"]


# -- announcement -----------------------------------------------------------------------------


async def test_each_child_is_announced_exactly_once_across_restarts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hook_file = tmp_path / "hook.jsonl"
    state = tmp_path / "state"

    def announcer() -> Announcer:
        return Announcer(command=[*APPEND_HOOK, str(hook_file)], backoff_initial_s=0.01)

    registry = Registry(state, save_interval_s=0.01)
    async with running(registry, announcer()):
        registry.observe("10.0.0.1", b"a", T0)
        registry.observe("10.0.0.2", b"b", T0)
        registry.observe("10.0.0.2", b"b", T0 + 1)
        await eventually(lambda: all(c.announced for c in registry.children()))
    assert all(c.announced for c in load_children(state))

    registry = Registry(state, save_interval_s=0.01)
    async with running(registry, announcer()):
        registry.observe("10.0.0.1", b"a", T0 + 2)
        registry.observe("10.0.0.3", b"c", T0 + 2)
        await eventually(lambda: all(c.announced for c in registry.children()))

    registry = Registry(state, save_interval_s=0.01)
    async with running(registry, announcer()):
        await asyncio.sleep(0.1)

    assert sorted(c.ip for c in hook_lines(hook_file)) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert sorted(new_lines(caplog)) == [
        "new child server 10.0.0.1 (hostname a)",
        "new child server 10.0.0.2 (hostname b)",
        "new child server 10.0.0.3 (hostname c)",
    ]


async def test_unannounced_child_is_announced_at_start_without_logging_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # registered and saved, but the process stopped before any hook ran
    registry = Registry(tmp_path)
    registry.observe("10.0.0.1", b"a", T0)
    registry.close()
    assert new_lines(caplog) == ["new child server 10.0.0.1 (hostname a)"]
    assert load_children(tmp_path)[0].announced is False

    hook_file = tmp_path / "hook.jsonl"
    registry = Registry(tmp_path, save_interval_s=0.01)
    async with running(registry, Announcer(command=[*APPEND_HOOK, str(hook_file)])):
        await eventually(lambda: len(hook_lines(hook_file)) == 1)
        await eventually(lambda: load_children(tmp_path)[0].announced)
    assert hook_lines(hook_file) == [Child("10.0.0.1", T0, T0, "a", 1, announced=False)]
    assert len(new_lines(caplog)) == 1


async def test_without_hooks_children_are_simply_marked_announced(tmp_path: Path) -> None:
    registry = Registry(tmp_path, save_interval_s=0.01)
    async with running(registry, Announcer()):
        registry.observe("10.0.0.1", b"a", T0)
        await eventually(
            lambda: load_children(tmp_path) != [] and load_children(tmp_path)[0].announced
        )


FAIL_TWICE_HOOK = [
    "sh",
    "-c",
    'cat > /dev/null; n=$(cat "$1" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "$1";'
    ' echo "attempt $n failed" >&2; [ "$n" -gt 2 ]',
    "sh",
]


async def test_failing_hook_is_retried_with_backoff_until_it_succeeds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    counter = tmp_path / "attempts"
    announcer = Announcer(
        command=[*FAIL_TWICE_HOOK, str(counter)], backoff_initial_s=0.05, backoff_max_s=0.2
    )
    registry = Registry(tmp_path / "state", save_interval_s=0.01)
    started = time.monotonic()
    async with running(registry, announcer):
        registry.observe("10.0.0.1", b"a", T0)
        await eventually(lambda: registry.children()[0].announced)
        elapsed = time.monotonic() - started
    assert counter.read_text().strip() == "3"
    assert elapsed >= 0.025 + 0.05  # two backoffs, each at least half its nominal delay
    assert load_children(tmp_path / "state")[0].announced

    failures = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(failures) == 1  # the second failure falls in the rate limit
    assert "attempt 1" in failures[0].getMessage()
    assert "exited with status 1: attempt 1 failed" in failures[0].getMessage()
    assert "succeeded (attempt 3)" in caplog.text


REJECT_ONE_HOOK = [
    "sh",
    "-c",
    'body=$(cat); case "$body" in *10.0.0.1*) echo x >> "$2"; exit 1;; esac; echo "$body" >> "$1"',
    "sh",
]


async def test_failing_child_blocks_neither_observe_nor_other_children(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hook_file, failures_file = tmp_path / "hook.jsonl", tmp_path / "failures"
    announcer = Announcer(
        command=[*REJECT_ONE_HOOK, str(hook_file), str(failures_file)],
        backoff_initial_s=0.01,
        backoff_max_s=0.02,
        concurrency=1,
    )
    registry = Registry(tmp_path / "state", save_interval_s=0.01)
    async with running(registry, announcer):
        registry.observe("10.0.0.1", b"bad", T0)
        await eventually(lambda: failures_file.exists())
        registry.observe("10.0.0.2", b"b", T0)
        registry.observe("10.0.0.3", b"c", T0)
        await eventually(lambda: len(hook_lines(hook_file)) == 2)
        for _ in range(1000):
            registry.observe("10.0.0.1", b"bad", T0 + 1)
        await eventually(lambda: len(failures_file.read_text().split()) >= 5)
        assert registry.get("10.0.0.1") == Child("10.0.0.1", T0, T0 + 1, "bad", 1001, False)
    assert {c.ip: c.announced for c in load_children(tmp_path / "state")} == {
        "10.0.0.1": False,
        "10.0.0.2": True,
        "10.0.0.3": True,
    }
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 1


HANG_FIRST_HOOK = [
    "sh",
    "-c",
    # the first attempt hangs in a grandchild holding stderr open; later ones succeed
    'if [ -e "$1" ]; then cat > /dev/null; exit 0; fi; touch "$1"; sleep 30; true',
    "sh",
]


async def test_hook_timeout_kills_the_command_and_retries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    announcer = Announcer(
        command=[*HANG_FIRST_HOOK, str(tmp_path / "marker")], timeout_s=0.3, backoff_initial_s=0.01
    )
    registry = Registry(tmp_path / "state", save_interval_s=0.01)
    async with running(registry, announcer):
        registry.observe("10.0.0.1", b"a", T0)
        await eventually(lambda: registry.children()[0].announced)
    assert "timed out after 0.3s" in caplog.text


async def test_shutdown_during_a_hook_kills_it_and_announces_at_next_start(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "marker"
    registry = Registry(tmp_path / "state", save_interval_s=0.01)
    async with running(registry, Announcer(command=[*HANG_FIRST_HOOK, str(marker)])):
        registry.observe("10.0.0.1", b"a", T0)
        await eventually(lambda: marker.exists())
    assert load_children(tmp_path / "state")[0].announced is False

    registry = Registry(tmp_path / "state", save_interval_s=0.01)
    async with running(registry, Announcer(command=[*HANG_FIRST_HOOK, str(marker)])):
        await eventually(lambda: registry.children()[0].announced)


# A hook that exits at once, leaving a sleeper that holds its stderr pipe and writes its pid to
# $1: in the hook's process group, or escaped from it (setsid), where no group kill reaches it.
# the sleeper writes its own pid once it has its own session: then no group kill can reach it
ESCAPE = 'setsid sh -c "echo \\$\\$ > $1; exec sleep 60"'
LEAVE_SLEEPER_HOOKS = {
    "in-group": ["sh", "-c", 'cat > /dev/null; sleep 60 & echo $! > "$1"; exit 0', "sh"],
    # (it exits once the sleeper has its session: a kill before would still reach it)
    "escaped": [
        "sh",
        "-c",
        f'cat > /dev/null; {ESCAPE} & until [ -s "$1" ]; do sleep 0.01; done',
        "sh",
    ],
}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie no longer holds anything
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"


@contextlib.contextmanager
def killed_at_end(pid_file: Path) -> Iterator[None]:
    try:
        yield
    finally:
        if pid_file.exists() and pid_file.read_text().strip():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), 9)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", list(LEAVE_SLEEPER_HOOKS))
async def test_a_hook_that_exits_is_done_whatever_it_leaves_holding_its_pipes(
    tmp_path: Path, kind: str
) -> None:
    """asyncio's wait() waits for the pipes too: a leftover sleeper held the runner until the
    hook timed out (and, escaped from the group, for ever). Now: done once the hook exits (the
    escaped one within HOOK_CLOSE_TIMEOUT_S), and what stayed in its group is killed."""
    pid_file = tmp_path / "sleeper.pid"
    announcer = Announcer(command=[*LEAVE_SLEEPER_HOOKS[kind], str(pid_file)], timeout_s=20)
    registry = Registry(tmp_path / "state", save_interval_s=0.01)
    with killed_at_end(pid_file):
        async with running(registry, announcer):
            registry.observe("10.0.0.1", b"a", T0)
            await eventually(lambda: registry.children()[0].announced, timeout_s=4)
        sleeper = int(pid_file.read_text())
        if kind == "in-group":
            await eventually(lambda: not _alive(sleeper), timeout_s=2)


@pytest.mark.timeout(30)
async def test_stopping_during_a_hook_whose_grandchild_escaped_with_its_pipes_is_immediate(
    tmp_path: Path,
) -> None:
    """The hang of the issue, made deterministic: the hook still runs when the announcer is
    cancelled, and a grandchild outside its process group holds its stderr. The cancel used to
    wait (communicate) for that pipe to close: for ever."""
    pid_file = tmp_path / "sleeper.pid"
    hook = ["sh", "-c", f"{ESCAPE} & cat > /dev/null; sleep 60", "sh"]
    registry = Registry(tmp_path / "state", save_interval_s=0.01)
    announcer = Announcer(command=[*hook, str(pid_file)], timeout_s=20)
    with killed_at_end(pid_file):
        tasks = [asyncio.create_task(announcer.run(registry))]
        registry.observe("10.0.0.1", b"a", T0)
        registry.save()  # hands the child to the announcer
        await eventually(lambda: pid_file.exists() and bool(pid_file.read_text().strip()))
        started = time.monotonic()
        tasks[0].cancel()
        done, _ = await asyncio.wait(tasks, timeout=3)
        assert done, "the announcer did not stop within 3 s of its cancellation"
        assert time.monotonic() - started < 1.0
        assert _alive(int(pid_file.read_text()))  # it escaped: no kill reaches it, no wait either


class HookServer:
    """A minimal HTTP endpoint on 127.0.0.1 answering with the given statuses, then 200."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.requests: list[tuple[bytes, bytes]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            self.requests.append((head, await reader.readexactly(length)))
            status = self.statuses.pop(0) if self.statuses else 200
            writer.write(b"HTTP/1.1 %d Whatever\r\nContent-Length: 0\r\n\r\n" % status)
            await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            yield f"http://hook:secret@127.0.0.1:{port}/children/register?node=n1"
        finally:
            server.close()
            await server.wait_closed()


async def test_http_hook_receives_the_child_json_and_is_retried(tmp_path: Path) -> None:
    hook = HookServer(statuses=[503, 404])
    registry = Registry(tmp_path, save_interval_s=0.01)
    async with hook.serving() as url:
        announcer = Announcer(url=url, backoff_initial_s=0.01, backoff_max_s=0.02)
        async with running(registry, announcer):
            registry.observe("10.244.2.7", b"web-1", T0)
            await eventually(lambda: registry.children()[0].announced)
    assert len(hook.requests) == 3
    head, body = hook.requests[-1]
    assert head.startswith(b"POST /children/register?node=n1 HTTP/1.1\r\n")
    assert b"\r\nContent-Type: application/json\r\n" in head
    assert b"\r\nAuthorization: Basic aG9vazpzZWNyZXQ=\r\n" in head
    assert msgspec.json.decode(body, type=Child) == Child("10.244.2.7", T0, T0, "web-1", 1, False)


async def test_command_and_url_hooks_each_succeed_once(tmp_path: Path) -> None:
    hook = HookServer(statuses=[500])
    hook_file = tmp_path / "hook.jsonl"
    registry = Registry(tmp_path / "state", save_interval_s=0.01)
    async with hook.serving() as url:
        announcer = Announcer(
            command=[*APPEND_HOOK, str(hook_file)], url=url, backoff_initial_s=0.01
        )
        async with running(registry, announcer):
            registry.observe("10.0.0.1", b"a", T0)
            await eventually(lambda: registry.children()[0].announced)
    assert len(hook.requests) == 2  # the URL was retried ...
    assert len(hook_lines(hook_file)) == 1  # ... the command that had succeeded was not


async def test_unreachable_url_is_a_retried_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()  # nothing listens on `port` any more
    registry = Registry(tmp_path, save_interval_s=0.01)
    announcer = Announcer(url=f"http://127.0.0.1:{port}/", backoff_initial_s=0.01)
    async with running(registry, announcer):
        registry.observe("10.0.0.1", b"a", T0)
        await eventually(
            lambda: "registration hook for child server 10.0.0.1 failed" in caplog.text
        )
    assert registry.children()[0].announced is False


@pytest.mark.parametrize("url", ["ftp://example.com/", "http://", "127.0.0.1:80", "http://h:x/"])
def test_bad_hook_url_is_rejected(url: str) -> None:
    with pytest.raises(ValueError, match="expecting an http"):
        Announcer(url=url)


# -- the CLI's view ---------------------------------------------------------------------------


def test_load_children_of_a_never_started_server(tmp_path: Path) -> None:
    assert load_children(tmp_path / "nowhere") == []


def test_format_table() -> None:
    children = [
        Child("10.0.0.10", T0, T0 + 60, "pod-ten", 12345, announced=True),
        Child("10.0.0.9", T0 + 1, T0 + 2, "evil\x1b[31mhost\n", 7, announced=False, via="10.1.1.1"),
        Child("::1", T0, T0, "", 1, announced=True),
    ]
    lines = format_table(children).splitlines()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(T0 + 1))
    assert lines[0].split() == ["IP", "HOSTNAME", "NAMESPACE", "POD", "WORKLOAD", "MESSAGES",
                                "FIRST", "SEEN", "LAST", "SEEN", "ANNOUNCED", "VIA"]  # fmt: skip
    assert [line.split()[0] for line in lines[1:]] == ["10.0.0.9", "10.0.0.10", "::1"]
    assert lines[1].split()[:6] == ["10.0.0.9", "evil\\x1b[31mhost\\n", "-", "-", "-", "7"]
    assert lines[1].split()[-2:] == ["pending", "10.1.1.1"]
    assert stamp in lines[1]
    assert lines[2].split()[-2:] == ["yes", "-"]
    assert lines[3].split()[1] == "-"
    # messages are right-aligned under their header
    column_end = lines[0].index("MESSAGES") + len("MESSAGES")
    assert [line[column_end - 5 : column_end] for line in lines[1:]] == ["    7", "12345", "    1"]


def test_format_table_of_no_children() -> None:
    assert (
        format_table([])
        == "IP  HOSTNAME  NAMESPACE  POD  WORKLOAD  MESSAGES  FIRST SEEN  LAST SEEN  ANNOUNCED  VIA\n"
    )
