"""Per-file line writers: buffered appends, one write per file per flush, a bounded fd cache.

Knows paths and bytes, not syslog. Lines are appended to an in-memory buffer per file name and
written with O_APPEND on a short timer (and when a buffer grows large), so the hot path makes no
system call. Each write carries whole lines only, so several processes may append to one file.

A file only ever holds whole lines. A write the disk cuts short (ENOSPC, EDQUOT, EIO) leaves
part of a line at the end of the file; those bytes are cut back (ftruncate) to the end of the
last whole line before the rest is tried again, so the lines that follow start on a line of
their own.
Keeping the tail to complete it later was the other choice, but it leaves the torn line in the
file for as long as the disk stays full (for ever if the process dies meanwhile), and another
writer's line could be appended onto it. The cut is made only when the file still ends exactly
where this write ended (another writer's line is never cut), and with several workers
(`shared`) each write and its cut-back hold an exclusive flock on the file, so no other worker
appends in between.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

FLUSH_THRESHOLD_BYTES = 256 * 1024  # a busy file is written before the timer fires
TORN_TAIL_SCAN_BYTES = 1024 * 1024  # longer than any line (8096 bytes escaped, with its fields)
Schedule = Callable[[float, Callable[[], None]], object]
# O_RDWR, not O_WRONLY: a reopened file's last bytes are read (see _heal_torn_tail)
_OPEN_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 16  # buffers per writev


class FileSink:
    """Appends lines to files under `directory` (names are relative, chosen by the caller)."""

    def __init__(
        self,
        directory: str | Path,
        *,
        max_open_files: int = 1024,
        file_mode: int = 0o640,
        dir_mode: int = 0o755,
        fsync_on_close: bool = True,
        flush_after_s: float = 0.02,
        schedule: Schedule | None = None,
        shared: bool = False,
    ) -> None:
        """`schedule(delay, callback)` (an event loop's `call_later`) makes buffered lines get
        written `flush_after_s` after the first of them arrived; without it, call `flush()`.
        `shared`: other processes (workers) append to the same files; see the module doc."""
        self.directory = Path(directory)
        self.max_open_files = max_open_files
        self.file_mode = file_mode
        self.dir_mode = dir_mode
        self.fsync_on_close = fsync_on_close
        self._buffers: dict[str, list[bytes]] = {}
        self._buffered_bytes: dict[str, int] = {}
        self._buffered_lines: dict[str, int] = {}
        self._fds: OrderedDict[str, int] = OrderedDict()  # LRU: oldest first
        self.lines_written = 0
        self.bytes_written = 0
        self.lines_failed = 0
        self.evictions = 0
        self.rotations = 0
        self.torn_tails = 0  # half-written last lines cut off when a file was reopened
        self._last_error_log = 0.0
        self._flush_after_s = flush_after_s
        self._schedule = schedule
        self._shared = shared
        self._flush_pending = False
        self._unsynced: set[str] | None = None  # written since `sync`, once sync is used
        self._new_dirs: set[Path] = set()  # holding files created since `sync`

    # -- hot path -------------------------------------------------------------------------
    def append(self, name: str, line: bytes) -> None:
        """Queue one complete line (LF-terminated) for `directory/name`."""
        self.extend(name, [line])

    def extend(self, name: str, lines: list[bytes]) -> None:
        """Queue several complete lines for `directory/name`."""
        self.extend_block(name, b"".join(lines), len(lines))

    def extend_block(self, name: str, block: bytes, count: int) -> None:
        """Queue `count` complete lines, joined, for `directory/name`."""
        size = len(block)
        buffer = self._buffers.get(name)
        if buffer is None:
            self._buffers[name] = [block]
            self._buffered_bytes[name] = size
            self._buffered_lines[name] = count
        else:
            buffer.append(block)
            size += self._buffered_bytes[name]
            self._buffered_bytes[name] = size
            self._buffered_lines[name] += count
        if size >= FLUSH_THRESHOLD_BYTES:
            self._write(name)
        elif not self._flush_pending and self._schedule is not None:
            self._flush_pending = True
            self._schedule(self._flush_after_s, self.flush)

    # -- flushing -------------------------------------------------------------------------
    def flush(self) -> None:
        """Write every buffered line (one write per file)."""
        self._flush_pending = False
        for name in list(self._buffers):
            self._write(name)

    def sync(self) -> None:
        """fsync what was written since the last `sync` (files, and the directories of files
        created): for acknowledgements that must outlive a host crash (RELP `fsynced`)."""
        # the first call syncs every open file: what was written before is not tracked
        names = set(self._fds) if self._unsynced is None else self._unsynced
        self._unsynced = set()
        for name in names:
            fd = self._fds.get(name)
            if fd is not None:
                with contextlib.suppress(OSError):  # EIO here shows at the next write too
                    os.fsync(fd)
        dirs, self._new_dirs = self._new_dirs, set()
        for directory in dirs:
            with contextlib.suppress(OSError):
                dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)

    @property
    def buffered_bytes(self) -> int:
        return sum(self._buffered_bytes.values())

    @property
    def open_files(self) -> int:
        return len(self._fds)

    def reopen(self) -> None:
        """Close every file so the next write opens it by name again (logrotate's HUP)."""
        self.flush()
        for name in list(self._fds):
            self._close(name)

    def reopen_rotated(self) -> int:
        """Close files that were renamed, deleted or replaced since we opened them (one stat
        each); the next line reopens them by name. Returns how many. A file truncated in place
        (copytruncate) needs nothing: O_APPEND writes go to its new end."""
        rotated = 0
        for name, fd in list(self._fds.items()):
            try:
                opened = os.fstat(fd)
                current = os.stat(self.directory / name)
                moved = (opened.st_ino, opened.st_dev) != (current.st_ino, current.st_dev)
            except FileNotFoundError:
                moved = True
            except OSError:
                continue
            if moved:
                self._write(name)  # what is buffered belongs to the file being rotated out
                self._close(name)
                rotated += 1
        self.rotations += rotated
        return rotated

    def close(self) -> None:
        self.flush()
        for name in list(self._fds):
            self._close(name, sync=self.fsync_on_close)

    def _write(self, name: str) -> None:
        blocks = self._buffers.pop(name, None)
        size = self._buffered_bytes.pop(name, 0)
        lines = self._buffered_lines.pop(name, 0)
        if not blocks:
            return
        try:
            fd = self._fd(name)
        except OSError as exc:
            self._failed(name, lines, exc)
            return
        if self._shared:
            _lock(fd, fcntl.LOCK_EX)  # no other worker appends between write and cut-back
        try:
            kept, error, data = self._write_blocks(name, fd, blocks, size)
        finally:
            if self._shared:
                _lock(fd, fcntl.LOCK_UN)
        count = lines if error is None else data.count(b"\n", 0, kept)
        if self._unsynced is not None:
            self._unsynced.add(name)
        self.lines_written += count
        self.bytes_written += kept
        if error is not None:
            self._failed(name, lines - count, error)

    def _write_blocks(
        self, name: str, fd: int, blocks: list[bytes], size: int
    ) -> tuple[int, OSError | None, bytes]:
        """Write the buffered blocks (`size` bytes in all) in one system call: (bytes of whole
        lines written, the error that stopped the rest, the blocks as one bytes if they had to
        be joined, else b"")."""
        if len(blocks) == 1:
            return (*self._write_lines(name, fd, blocks[0]), blocks[0])
        if len(blocks) <= _IOV_MAX:
            # writev: a busy file's flush would otherwise copy ~256 KiB into one bytes first
            # (7 % of a TCP message's cost, measured); the kernel appends it as one write
            try:
                written = os.writev(fd, blocks)
            except OSError:
                written = 0  # (tried again below as one write, to get the error it gives)
            if written == size:
                return size, None, b""
        else:
            written = 0
        # a short write (the disk is full) or too many blocks: the rest as one bytes
        data = b"".join(blocks)
        kept, error = self._write_lines(name, fd, data, written)
        return kept, error, data

    def _write_lines(
        self, name: str, fd: int, data: bytes, done: int = 0
    ) -> tuple[int, OSError | None]:
        """(bytes of whole lines written, the error that stopped the rest). After a short
        write the partial line is cut back before the rest is tried again (space may have
        come back): so the rest never lands after another writer's line. `done`: bytes of
        `data` an earlier write already put in the file."""
        view = memoryview(data)
        kept = 0
        while kept < len(data):
            if done:
                written, done = done, 0
            else:
                try:
                    written = os.write(fd, view[kept:])
                except OSError as exc:
                    return kept, exc
            if kept + written == len(data):
                return len(data), None
            whole = data.rfind(b"\n", kept, kept + written) + 1 or kept  # each line ends in LF
            if whole < kept + written and not self._cut_back(name, fd, kept + written - whole):
                return whole, OSError(errno.EIO, "a partly written line could not be removed")
            if whole == kept:  # not one more whole line fitted
                return kept, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            kept = whole
        return kept, None

    def _cut_back(self, name: str, fd: int, partial: int) -> bool:
        """Remove the `partial` bytes of a torn line this write left at the end of the file."""
        try:
            end = os.lseek(fd, 0, os.SEEK_CUR)  # O_APPEND: where this write ended
            if os.fstat(fd).st_size == end:
                os.ftruncate(fd, end - partial)
                return True
            reason = "another writer appended after it"
        except OSError as exc:
            reason = exc.strerror or str(exc)
        logger.error("%s: cannot remove a partly written line (%s)", self.directory / name, reason)
        return False

    def _failed(self, name: str, lines: int, exc: OSError) -> None:
        self.lines_failed += lines
        self._log_error(name, exc)
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            self._close(name)  # a bad descriptor or a vanished dir: reopen next time

    def _fd(self, name: str) -> int:
        fd = self._fds.get(name)
        if fd is not None:
            # one fstat per file per flush, not per line: a file deleted since (the log dir
            # removed) is reopened by name before anything is written into it and lost
            if os.fstat(fd).st_nlink > 0:
                self._fds.move_to_end(name)
                return fd
            self._close(name)
            self.rotations += 1
        while len(self._fds) >= self.max_open_files:
            oldest = next(iter(self._fds))
            self._close(oldest)
            self.evictions += 1
        fd = self._open(self.directory / name)
        self._fds[name] = fd
        return fd

    def _open(self, path: Path) -> int:
        try:
            fd = os.open(path, _OPEN_FLAGS | os.O_EXCL, self.file_mode)
            if self._unsynced is not None:
                self._new_dirs.add(path.parent)  # the new name must survive a crash too
        except FileExistsError:
            fd = os.open(path, _OPEN_FLAGS, self.file_mode)
            self._heal_torn_tail(path, fd)
            return fd
        except FileNotFoundError:
            self._make_dirs(path.parent)
            return self._open(path)
        os.fchmod(fd, self.file_mode)  # the umask must not narrow or widen the mode
        return fd

    def _heal_torn_tail(self, path: Path, fd: int) -> None:
        """A writer killed inside write(2) (SIGKILL, the OOM killer: the kernel stops a long
        write between pages) leaves a line without its end, and the next line appended would be
        welded onto it: cut the file back to its last LF before writing. What was cut was never
        a whole line, so no message that was written is lost by it."""
        try:
            if self._shared:
                _lock(fd, fcntl.LOCK_EX)  # a live worker's write is whole or not begun
            try:
                size = os.fstat(fd).st_size
                if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
                    return
                start = max(0, size - TORN_TAIL_SCAN_BYTES)
                last = os.pread(fd, size - start, start).rfind(b"\n")
                if last < 0 and start > 0:
                    logger.warning("%s: ends without LF and holds no LF in its last %d bytes: "
                                   "left as it is", path, TORN_TAIL_SCAN_BYTES)  # fmt: skip
                    return
                keep = start + last + 1
                os.ftruncate(fd, keep)
            finally:
                if self._shared:
                    _lock(fd, fcntl.LOCK_UN)
        except OSError as exc:
            logger.warning("%s: cannot check its last line (%s)", path, exc)
            return
        self.torn_tails += 1
        logger.warning(
            "%s: cut %d bytes of a line left half written (a writer killed while writing it)",
            path, size - keep,
        )  # fmt: skip

    def _make_dirs(self, directory: Path) -> None:
        missing = []
        while not directory.exists():
            missing.append(directory)
            directory = directory.parent
        for new in reversed(missing):
            new.mkdir(exist_ok=True)
            os.chmod(new, self.dir_mode)

    def _close(self, name: str, *, sync: bool = False) -> None:
        fd = self._fds.pop(name, None)
        if fd is None:
            return
        if self._unsynced is not None and name in self._unsynced:
            self._unsynced.discard(name)
            sync = True  # evicted before `sync` came to it
        try:
            if sync:
                os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def _log_error(self, name: str, exc: OSError) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= 10.0:  # one line per interval, not per message
            self._last_error_log = now
            logger.error(
                "cannot write %s: %s (%d lines not written so far)",
                self.directory / name, exc.strerror, self.lines_failed,
            )  # fmt: skip


def _lock(fd: int, operation: int) -> None:
    # no lock (ENOLCK): the write goes ahead, and the size check still guards the cut-back
    with contextlib.suppress(OSError):
        fcntl.flock(fd, operation)
