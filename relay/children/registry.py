"""Child-server registry: every source IP that sent us a message, persisted and announced once.

Owns `<state_dir>/children.json` (plus `.bak`, the previous good version, and `.tmp`). The file
is only ever replaced whole (temp file, fsync, `os.replace`, fsync of the directory), so another
process (`plura-relay children`, through `load_children`) can read it at any time and sees either
the old or the new registry, never a mix. A file that is corrupt anyway (disk trouble, hand
edits) is moved aside to `children.json.corrupt-<timestamp>` and the `.bak` is used instead.

Format: `{"version":1,"children":[...]}` with one child object per line, so it also greps well.
`messages`, `last_seen` and `hostname` of known children are written at most every
`stats_save_interval_s` (and at `close()`): a crash loses at most that much of the counters.

Announcement, once per child across restarts:
- the INFO line `new child server <ip> (hostname <h>)` is emitted right after the first save
  that contains the child. A child on disk has therefore had its line logged, and a restart
  never logs it again; a crash before that save loses the record too, so the child is new again
  when it next sends. (No `logged` flag is needed on disk; the only gap is a crash between the
  fsync and the log call.) If the save fails, the line is logged anyway and the save retried.
- the registration hooks (`Announcer`) run for children whose `announced` is false: new ones
  after that same save, and at start every loaded child whose hook never succeeded. On success
  `announced` becomes true and is saved. Hooks are at-least-once (a crash between the hook
  succeeding and that save runs it again at start), so hook receivers should key on `ip` and
  `pod_uid`.

Pod identity: with a `resolve` (the Kubernetes pod index, relay.kube), a source whose IP is a
known pod of this node is the child (IP, pod UID), with the pod's namespace, name, node, owning
workload, containers and configured labels. When another pod takes the IP, that is a new child
(announced once, like any); the previous one keeps its first/last seen. A source resolve does
not know (API away, not a pod, or stamped with an origin address by a relay) is keyed by its IP
as without Kubernetes. Hooks and `mark_announced` key on `Child.key`: the IP, or `IP|UID`.

Ownership: one process and one asyncio loop own the registry (runtime.common's state-dir lock).
During a rolling update the new process observes sources before the old one has saved and
exited; it then `take_over`s: merges what the old one saved with what it saw meanwhile. If
reception is ever spread over worker processes, the workers do not open the registry; they
report `(ip, hostname, received_at, count)` to the owner, which calls `observe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec

from relay.kube.index import Pod
from relay.message import printable

logger = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path("/var/lib/plura-relay")
REGISTRY_NAME = "children.json"
FORMAT_VERSION = 1
FILE_MODE = 0o644
STATS_SAVE_INTERVAL_S = 30.0
FAILURE_LOG_INTERVAL_S = 60.0


class Child(msgspec.Struct):
    """One child server as persisted, listed and sent to the registration hooks."""

    ip: str
    first_seen: float
    last_seen: float
    hostname: str
    """Last HOSTNAME seen; invalid UTF-8 is kept as backslash escapes."""
    messages: int
    announced: bool
    """The registration hooks succeeded (or none are configured)."""
    via: str | None = None
    """The relay the child's messages came through, if any."""
    pod_uid: str | None = None
    """The pod behind the IP (Kubernetes pod identity), if known; then also:"""
    namespace: str = ""
    pod: str = ""
    node: str = ""
    workload_kind: str = ""
    """Kind of the controlling owner (`Deployment` for a Deployment's ReplicaSet), or `Pod`."""
    workload: str = ""
    containers: list[str] = msgspec.field(default_factory=list)
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    """The pod's labels named in `[kubernetes] labels`."""

    @property
    def key(self) -> str:
        """The registry's key: the IP, or `IP|UID` for a pod."""
        return self.ip if self.pod_uid is None else f"{self.ip}|{self.pod_uid}"


def _child_pod(c: Child) -> Pod | None:
    if c.pod_uid is None:
        return None
    return Pod(c.pod_uid, c.namespace, c.pod, c.node, c.workload_kind, c.workload,
               list(c.containers), dict(c.labels))  # fmt: skip


class _File(msgspec.Struct):
    children: list[Child]
    version: int = FORMAT_VERSION


class _Entry(msgspec.Struct, gc=False):
    ip: str
    first_seen: float
    last_seen: float
    hostname: bytes | str  # bytes as received (decoded only when saved), str when loaded
    messages: int
    announced: bool
    via: str | None
    pod: Pod | None = None


_encoder = msgspec.json.Encoder()
"""A registration hook: delivers a child's JSON, returns None on success or why it failed."""


def _text(hostname: bytes | str) -> str:
    if isinstance(hostname, str):
        return hostname
    return hostname.decode("utf-8", "backslashreplace")


class RateLimitedLog:
    """Logs a warning at most once per interval, counting the ones it swallowed."""

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._last = -math.inf
        self._suppressed = 0

    def warning(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < self._interval_s:
            self._suppressed += 1
            return
        if self._suppressed:
            msg += " (%d similar messages suppressed)"
            args = (*args, self._suppressed)
        self._last, self._suppressed = now, 0
        logger.warning(msg, *args)


class Registry:
    """The in-memory registry of one owner process, saved to `<state_dir>/children.json`.

    `on_new(child)` is called synchronously from `observe` for each new IP (metrics, reporting).
    Run `run_saver()` as a task and an `Announcer` (even without hooks: it then only marks
    children announced), and call `close()` at shutdown.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        on_new: Callable[[Child], None] | None = None,
        save_interval_s: float = 1.0,
        stats_save_interval_s: float = STATS_SAVE_INTERVAL_S,
        resolve: Callable[[str], Pod | None] | None = None,
    ) -> None:
        """`resolve(ip)`: the pod behind an address now (relay.kube.index.PodIndex.resolve)."""
        self.path = Path(state_dir) / REGISTRY_NAME
        self._on_new = on_new
        self._resolve = resolve
        self.resolved = 0  # source batches resolve found a pod for
        self.unresolved = 0
        self._save_interval_s = save_interval_s
        self._stats_save_interval_s = stats_save_interval_s
        self._entries: dict[str, _Entry] = {}
        self._fresh: list[str] = []  # registered since the last save: to log and announce
        self._unannounced: asyncio.Queue[str] = asyncio.Queue()
        self._dirty = False
        self._saved_at = time.monotonic()
        self._generation = 0
        # Guarded by _write_lock: a cancelled saver's thread may still be writing at close().
        self._write_lock = threading.Lock()
        self._written_generation = 0
        self._written: bytes | None = None  # what children.json holds, if we know it is good
        self._save_errors = RateLimitedLog(FAILURE_LOG_INTERVAL_S)
        self._loaded: dict[str, int] = {}  # messages per child as loaded (take_over's base)
        self._load()

    # -- hot path ---------------------------------------------------------------------------

    def observe(
        self,
        ip: str,
        hostname: bytes,
        received_at: float,
        count: int = 1,
        via: str | None = None,
    ) -> None:
        """Record `count` messages from `ip` (through relay `via`, if stamped with an origin
        address): O(1), no allocation unless `ip` is new (or a pod)."""
        key, pod = ip, None
        if self._resolve is not None:
            # an origin address is another node's pod: this node's index does not know it
            pod = self._resolve(ip) if via is None else None
            if pod is None:
                self.unresolved += 1
            else:
                self.resolved += 1
                key = f"{ip}|{pod.uid}"
        entry = self._entries.get(key)
        if entry is None:
            self._register(key, ip, hostname, received_at, count, via, pod)
            return
        entry.last_seen = received_at
        entry.hostname = hostname
        entry.messages += count
        if via is not None and entry.via != via:
            entry.via = via
            self._dirty = True

    def _register(
        self,
        key: str,
        ip: str,
        hostname: bytes,
        received_at: float,
        count: int,
        via: str | None,
        pod: Pod | None,
    ) -> None:
        entry = _Entry(ip, received_at, received_at, hostname, count, False, via, pod)
        self._entries[key] = entry
        self._fresh.append(key)
        self._dirty = True
        if self._on_new is not None:
            self._on_new(self._child(entry))

    # -- queries ------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        return len(self._entries)

    def active(self, now: float, inactive_after_s: float) -> int:
        """How many children were heard from in the last `inactive_after_s` seconds."""
        since = now - inactive_after_s
        return sum(1 for entry in self._entries.values() if entry.last_seen >= since)

    def get(self, key: str) -> Child | None:
        """By `Child.key`: the IP, or `IP|UID`."""
        entry = self._entries.get(key)
        return None if entry is None else self._child(entry)

    def children(self) -> list[Child]:
        """A snapshot, in registration order."""
        return [self._child(entry) for entry in self._entries.values()]

    @staticmethod
    def _child(e: _Entry) -> Child:
        hostname = _text(e.hostname)
        child = Child(e.ip, e.first_seen, e.last_seen, hostname, e.messages, e.announced, e.via)
        pod = e.pod
        if pod is None:
            return child
        return msgspec.structs.replace(
            child,
            pod_uid=pod.uid,
            namespace=pod.namespace,
            pod=pod.name,
            node=pod.node,
            workload_kind=pod.workload_kind,
            workload=pod.workload,
            containers=list(pod.containers),
            labels=dict(pod.labels),
        )

    # -- announcement ---------------------------------------------------------------------------

    async def next_unannounced(self) -> Child:
        """Wait for a child whose registration hooks have not succeeded yet."""
        while True:
            key = await self._unannounced.get()
            entry = self._entries.get(key)
            if entry is not None and not entry.announced:
                return self._child(entry)

    def mark_announced(self, key: str) -> None:
        entry = self._entries.get(key)
        if entry is not None and not entry.announced:
            entry.announced = True
            self._dirty = True

    def _announce_fresh(self, fresh: list[str]) -> None:
        for key in fresh:
            e = self._entries[key]
            pod = e.pod
            if pod is None:
                logger.info("new child server %s (hostname %s)", e.ip, _text(e.hostname))
            else:
                logger.info(
                    "new child server %s (hostname %s, pod %s/%s uid %s, %s %s)",
                    e.ip, _text(e.hostname), pod.namespace, pod.name, pod.uid,
                    pod.workload_kind, pod.workload,
                )  # fmt: skip
            self._unannounced.put_nowait(key)

    # -- persistence --------------------------------------------------------------------------

    async def run_saver(self) -> None:
        """Save every `save_interval_s` when dirty, and counters every `stats_save_interval_s`."""
        while True:
            await asyncio.sleep(self._save_interval_s)
            stale = time.monotonic() - self._saved_at >= self._stats_save_interval_s
            if not (self._dirty or stale):
                continue
            data, generation, fresh = self._prepare()
            try:
                # fsync may take long on a busy disk: keep it off the loop
                await asyncio.to_thread(self._write, data, generation)
            except OSError as exc:
                self._dirty = True
                self._save_errors.warning("cannot save child registry %s: %s", self.path, exc)
            finally:
                self._announce_fresh(fresh)

    def save(self) -> None:
        """Write the registry now (blocking); raises OSError, leaving the old file intact."""
        data, generation, fresh = self._prepare()
        try:
            self._write(data, generation)
        except OSError:
            self._dirty = True
            raise
        finally:
            self._announce_fresh(fresh)

    def close(self) -> None:
        """Final save at shutdown; logs instead of raising."""
        try:
            self.save()
        except OSError as exc:
            logger.error("cannot save child registry %s: %s", self.path, exc)

    def _prepare(self) -> tuple[bytes, int, list[str]]:
        fresh, self._fresh = self._fresh, []
        self._dirty = False
        self._saved_at = time.monotonic()
        self._generation += 1
        parts = [_encoder.encode(self._child(e)) for e in self._entries.values()]
        data = b'{"version":%d,"children":[\n%s\n]}\n' % (FORMAT_VERSION, b",\n".join(parts))
        return data, self._generation, fresh

    def _write(self, data: bytes, generation: int) -> None:
        with self._write_lock:
            if generation <= self._written_generation:
                return  # a newer snapshot is already on disk
            if data != self._written:
                _replace_atomically(self.path, data, keep_backup=self._written is not None)
                self._written = data
            self._written_generation = generation

    def _load(self) -> None:
        try:
            children, self._written = _read(self.path)
        except FileNotFoundError:
            children = self._load_backup()
        except msgspec.DecodeError as exc:
            self._set_aside(exc)
            children = self._load_backup()
        except OSError as exc:
            logger.warning("cannot read child registry %s (%s); starting empty", self.path, exc)
            children = []
        for c in children:
            entry = _Entry(c.ip, c.first_seen, c.last_seen, c.hostname, c.messages, c.announced,
                           c.via, _child_pod(c))  # fmt: skip
            self._entries[c.key] = entry
            self._loaded[c.key] = c.messages
            if not c.announced:
                self._unannounced.put_nowait(c.key)

    def take_over(self) -> None:
        """The previous owner has saved and released the state dir: merge its last save into
        what this process observed since it loaded the file (message counts add up, first and
        last seen widen, announced if either announced it); children it already logged as new
        are not logged again."""
        try:
            saved, self._written = _read(self.path)
        except FileNotFoundError:
            return
        except (OSError, msgspec.DecodeError) as exc:
            logger.warning("cannot read child registry %s to take it over (%s)", self.path, exc)
            return
        for c in saved:
            e = self._entries.get(c.key)
            if e is None:
                e = _Entry(c.ip, c.first_seen, c.last_seen, c.hostname, c.messages, c.announced,
                           c.via, _child_pod(c))  # fmt: skip
                self._entries[c.key] = e
                if not c.announced:
                    self._unannounced.put_nowait(c.key)
                continue
            e.messages += c.messages - self._loaded.get(c.key, 0)
            e.first_seen = min(e.first_seen, c.first_seen)
            if c.last_seen > e.last_seen:
                e.last_seen, e.hostname = c.last_seen, c.hostname
            e.announced = e.announced or c.announced
            e.via = e.via or c.via
        on_disk = {c.key for c in saved}
        self._fresh = [key for key in self._fresh if key not in on_disk]
        self._loaded = {c.key: c.messages for c in saved}  # what is merged in now
        self._dirty = True

    def _set_aside(self, exc: Exception) -> None:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        aside = self.path.with_name(f"{REGISTRY_NAME}.corrupt-{stamp}")
        try:
            os.replace(self.path, aside)
        except OSError as move_exc:
            aside = Path(f"(not moved: {move_exc})")
        logger.warning("child registry %s is corrupt (%s); set aside as %s", self.path, exc, aside)

    def _load_backup(self) -> list[Child]:
        backup = _backup_path(self.path)
        try:
            children, _ = _read(backup)
        except FileNotFoundError:
            return []
        except (OSError, msgspec.DecodeError) as exc:
            logger.warning("cannot use child registry backup %s (%s); starting empty", backup, exc)
            return []
        logger.warning("child registry restored from backup %s", backup)
        self._dirty = True  # rewrite children.json soon
        return children


def _backup_path(path: Path) -> Path:
    return path.with_name(path.name + ".bak")


def _read(path: Path) -> tuple[list[Child], bytes]:
    data = path.read_bytes()
    return msgspec.json.decode(data, type=_File).children, data


def _replace_atomically(path: Path, data: bytes, *, keep_backup: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    with open(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if keep_backup:
        _keep_backup(path)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _keep_backup(path: Path) -> None:
    """Make the current (good) file the `.bak`, without a moment where `path` is missing."""
    tmp = path.with_name(path.name + ".bak.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        os.link(path, tmp)  # path is only ever replaced, never rewritten: the link stays valid
    except FileNotFoundError:
        return
    except OSError:
        shutil.copyfile(path, tmp)  # a filesystem without hard links
    os.replace(tmp, _backup_path(path))


def load_children(state_dir: Path = DEFAULT_STATE_DIR) -> list[Child]:
    """Read the registry of a running or stopped server, without changing any file.

    A missing registry is empty; a corrupt one falls back to the `.bak` (with a warning).
    Raises OSError only when the files exist but cannot be read (e.g. permissions).
    """
    path = Path(state_dir) / REGISTRY_NAME
    for candidate in (path, _backup_path(path)):
        try:
            return _read(candidate)[0]
        except FileNotFoundError:
            continue
        except msgspec.DecodeError as exc:
            logger.warning("child registry %s is corrupt: %s", candidate, exc)
    return []


def is_active(child: Child, now: float, inactive_after_s: float) -> bool:
    return now - child.last_seen < inactive_after_s


def format_table(children: Iterable[Child], *, inactive_after_s: float | None = None) -> str:
    """The human view of `plura-relay children`: one line per child, sorted by address; with
    `inactive_after_s`, a STATUS column says which children have gone quiet."""
    now = time.time()
    header = ("IP", "HOSTNAME", "NAMESPACE", "POD", "WORKLOAD", "MESSAGES", "FIRST SEEN",
              "LAST SEEN", "ANNOUNCED", "VIA")  # fmt: skip
    rows: list[tuple[str, ...]] = [header]
    rows += [_row(c) for c in sorted(children, key=_ip_key)]
    if inactive_after_s is not None:
        status = ["STATUS"] + [
            "active" if is_active(c, now, inactive_after_s) else "inactive"
            for c in sorted(children, key=_ip_key)
        ]
        rows = [(*row[:8], status[i], *row[8:]) for i, row in enumerate(rows)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [row[i].rjust(w) if i == 5 else row[i].ljust(w) for i, w in enumerate(widths)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _row(c: Child) -> tuple[str, ...]:
    first, last = _local_time(c.first_seen), _local_time(c.last_seen)
    announced = "yes" if c.announced else "pending"
    hostname = printable(c.hostname) or "-"
    via = printable(c.via) if c.via else "-"
    pod = (printable(c.namespace) or "-", printable(c.pod) or "-")
    workload = printable(f"{c.workload_kind}/{c.workload}") if c.workload else "-"
    return (printable(c.ip), hostname, *pod, workload, str(c.messages), first, last, announced,
            via)  # fmt: skip


def _ip_key(child: Child) -> tuple[int, int, int, str, float]:
    try:
        addr = ipaddress.ip_address(child.ip)
    except ValueError:
        return (1, 0, 0, child.ip, child.first_seen)
    return (0, addr.version, int(addr), "", child.first_seen)  # one IP's pods: oldest first


def _local_time(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
