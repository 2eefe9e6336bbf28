"""Disk-backed, append-only, at-least-once queue for one forward target.

Owns one directory: segments `%016d.seg`, whose records are appended in order, and `cursor`, the
committed position as `"<segment> <offset>\\n"`, replaced atomically. The record layout is
relay.forward.spool_disk's: a magic marker, a CRC-32 over the rest, length, time, message count,
payload; a torn write or a rotted byte is found before it is sent, and the next valid record
after it is found again by its marker. A record holds up to MAX_RECORD_MESSAGES messages (a
forwarder spools each received batch, already framed, as a few records); counts
(`pending_records`, the drop counters, `inspect`) are in messages.

Flow: the receive path `append`s (memory only) and `flush`es once per batch (one write, so a
SIGKILL after the flush loses nothing); the sender `read`s from its read position, `commit`s what
the upstream surely has, and `rewind`s to the committed position after a connection loss, so
what follows it is sent again: at least once, never lost. Every open starts a new segment, so a
segment written by an earlier process is never appended to.

Bad data never stops a start (a crash loop is the one thing that must not happen): at open every
record after the committed position is checked; damaged bytes (a torn tail, a checksum mismatch,
a zeroed block) are cut out of the segment up to the next valid record and kept in
`<segment>.corrupt-<unix time>`, the segment is rewritten without them (a new file renamed over
it), and every later record is replayed as usual; each skip is logged and counted. `read` does
the same when data rots while the process runs. A file, directory or link where a segment, the
cursor or the spool directory itself should be is renamed aside the same way. A segment of the
old format 1 (no marker) is rewritten in format 2 at open, and its records are sent. Only a
directory that cannot be created, read or written at all makes the spool unusable
(SpoolUnusable): the caller runs on without it. relay.forward.spool_repair does the repairs.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from relay.forward.spool_disk import (
    COVERED,
    CRC,
    CURSOR_NAME,
    FILE_MODE,
    HEADER,
    LENGTH,
    LENGTH_AT,
    MAGIC,
    MAX_RECORD_MESSAGES,
    MESSAGES_AT,
    OPEN_FLAGS,
    Position,
    Survey,
    fsync_directory,
    is_v1,
    read_cursor,
    resolve_start,
    scan,
    seconds,
    segment_ids,
    survey,
    write_cursor,
)
from relay.forward.spool_repair import Repairs

logger = logging.getLogger(__name__)

WARNING_INTERVAL_S = 10.0
NTH_CACHE_ENTRIES = 4096

OnFull = Literal["block", "drop_oldest", "drop_newest"]
FsyncPolicy = Literal["never", "interval", "always"]


class SpoolUnusable(Exception):
    """The spool directory cannot be created, read or written at all (the message says why)."""


class _Segment:
    """A segment as known in memory: `size` bytes of whole, valid records, `records` of them.

    Both count from the segment's start, except in the segment the committed position was in at
    open, where they count from that position (what lies before it is never looked at again).
    """

    __slots__ = ("records", "size")

    def __init__(self, size: int = 0, records: int = 0) -> None:
        self.size = size
        self.records = records


class _Throttle:
    """Allows one log line per interval; callers sum up what happened in between."""

    def __init__(self, clock: Callable[[], float], interval_s: float = WARNING_INTERVAL_S) -> None:
        self._clock = clock
        self._interval_s = interval_s
        self._last = -math.inf

    def ready(self) -> bool:
        now = self._clock()
        if now - self._last < self._interval_s:
            return False
        self._last = now
        return True


class Spool:
    """The queue of one forward target in `directory`; one process and one thread own it.

    `on_full` applies when `pending_bytes` reaches `max_bytes`: "block" and "drop_newest" refuse
    appends that are not forced (the caller pauses TCP senders while `full`), "drop_oldest"
    deletes the oldest whole segments. `fsync`: after every flush ("always"), at most every
    `fsync_interval_s` and from `sync()` ("interval"), or only at close ("never").
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int,
        segment_bytes: int = 16 * 1024 * 1024,
        on_full: OnFull = "block",
        fsync: FsyncPolicy = "interval",
        fsync_interval_s: float = 1.0,
        cursor_interval_s: float = 0.2,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_bytes <= 0 or segment_bytes <= 0:
            raise ValueError(
                f"expecting max_bytes and segment_bytes > 0, got {max_bytes}, {segment_bytes}"
            )
        if on_full not in ("block", "drop_oldest", "drop_newest"):
            raise ValueError(f"expecting on_full block|drop_oldest|drop_newest, got {on_full!r}")
        if fsync not in ("never", "interval", "always"):
            raise ValueError(f"expecting fsync never|interval|always, got {fsync!r}")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.on_full = on_full
        self.fsync_policy = fsync
        self.fsync_interval_s = fsync_interval_s
        self.cursor_interval_s = cursor_interval_s
        self.on_data: Callable[[], None] | None = None
        self.read_messages = 0  # messages in the records the last `read` returned
        self.appended = self.dropped_oldest = self.dropped_newest = 0
        self._repairs = Repairs(self.directory, clock, fsync=fsync != "never")
        self._clock = clock
        self._buffer = bytearray()
        self._buffer_records = 0
        self._pending_bytes = 0
        self._segments: dict[int, _Segment] = {}  # ascending ids; the last one is being written
        self._write_fd: int | None = None
        self._unsynced = False
        self._roll_needed = False  # a failed write left bytes we could not cut off
        self._read_fd: int | None = None
        self._read_fd_segment = 0
        self._nth: dict[Position, int] = {}  # positions `read` returned -> records before them
        self._last_sync = self._last_persist = -math.inf
        self._dropped_unlogged = 0
        self._drop_log = _Throttle(clock)
        self._error_log = _Throttle(clock)
        self._closed = False
        self._write_id = 1
        self._persisted: Position | None = None  # what the cursor file says
        try:
            self._repairs.prepare_directory()
            self._committed = self._recover()
        except OSError as exc:
            raise SpoolUnusable(f"spool {self.directory}: {exc.strerror or exc}") from exc
        self._committed_nth = 0
        self._read, self._read_nth = self._committed, 0
        self._renormalize()
        self._recount()
        if self._persisted is not None and self._committed != self._persisted:
            self._persist()  # where recovery moved it (an upgraded segment's offsets changed)

    # -- hot path ---------------------------------------------------------------------------
    def append(self, payload: bytes, at: float, *, messages: int = 1, force: bool = False) -> bool:
        """Queues one record in memory (`flush` writes it); it holds `messages` messages (a
        forwarder stores a whole received batch, already framed, as one record). False: refused
        because the spool is full and `force` is not set (counted in `dropped_newest`)."""
        if not 0 < messages <= MAX_RECORD_MESSAGES:
            raise ValueError(f"expecting 1 to {MAX_RECORD_MESSAGES} messages, got {messages}")
        size = HEADER.size + len(payload)
        if self._pending_bytes + size > self.max_bytes and not self._make_room(
            size, force, messages
        ):
            return False
        covered = COVERED.pack(len(payload), seconds(at), messages)
        buffer = self._buffer
        buffer += MAGIC
        buffer += CRC.pack(zlib.crc32(payload, zlib.crc32(covered)))
        buffer += covered
        buffer += payload
        self._buffer_records += messages
        self._pending_bytes += size
        self.appended += messages
        return True

    def extend(self, payloads: list[bytes], at: float, *, force: bool = False) -> int:
        """`append` for the records of one received batch (the same records, fewer Python
        steps per record); returns how many were refused."""
        size = HEADER.size * len(payloads) + sum(map(len, payloads))
        if self._pending_bytes + size > self.max_bytes:  # the slow path decides per record
            return sum(not self.append(payload, at, force=force) for payload in payloads)
        # one message per record
        at_one = COVERED.pack(0, seconds(at), 1)[4:]
        buffer, crc32, pack_length, pack_crc = self._buffer, zlib.crc32, LENGTH.pack, CRC.pack
        for payload in payloads:
            covered = pack_length(len(payload)) + at_one
            buffer += MAGIC
            buffer += pack_crc(crc32(payload, crc32(covered)))
            buffer += covered
            buffer += payload
        self._buffer_records += len(payloads)
        self._pending_bytes += size
        self.appended += len(payloads)
        return 0

    def flush(self) -> None:
        """Writes the buffered records, one write per segment touched. On a write error (disk
        full...) they stay buffered, and the next flush tries again."""
        if not self._buffer or self._closed:
            return
        wrote = False
        try:
            while self._buffer:
                wrote = self._write_some() or wrote
        except OSError as exc:
            if self._error_log.ready():
                logger.warning(
                    "spool %s: cannot write segment %d (%s); keeping %d bytes in memory",
                    self.directory, self._write_id, exc, len(self._buffer),
                )  # fmt: skip
        if wrote:
            if self.fsync_policy == "always" or (
                self.fsync_policy == "interval"
                and self._clock() - self._last_sync >= self.fsync_interval_s
            ):
                self._fsync_writer()
            if self.on_data is not None:
                self.on_data()

    def sync(self) -> None:
        """fsyncs the segment being written and saves the cursor if it is due (for a timer)."""
        self._fsync_writer()
        self._maybe_persist()

    @property
    def full(self) -> bool:
        return self._pending_bytes >= self.max_bytes

    @property
    def unwritten_bytes(self) -> int:
        """Records appended and not yet written to a segment (a write failed: disk full...)."""
        return len(self._buffer)

    @property
    def pending_bytes(self) -> int:
        """Record bytes (headers included) after the committed position, unflushed ones too."""
        return self._pending_bytes

    @property
    def pending_records(self) -> int:
        first = self._committed.segment
        on_disk = sum(s.records for i, s in self._segments.items() if i >= first)
        return on_disk - self._committed_nth + self._buffer_records

    @property
    def oldest_at(self) -> float | None:
        """enqueued_at of the record at the committed position (None when nothing is pending)."""
        segment_id, offset = self._normalized(self._committed)
        if offset < self._segments[segment_id].size:
            fd = os.open(self._path(segment_id), os.O_RDONLY | OPEN_FLAGS)
            try:
                header = os.pread(fd, HEADER.size, offset)
            finally:
                os.close(fd)
            return float(HEADER.unpack(header)[3]) if len(header) == HEADER.size else None
        return float(HEADER.unpack_from(self._buffer)[3]) if self._buffer else None

    # -- sender side ------------------------------------------------------------------------
    def read(self, max_bytes: int = 256 * 1024) -> tuple[list[bytes], Position]:
        """Payloads of the next flushed records after the read position (about `max_bytes` of
        records, at least one if there is any) and the position after the last of them."""
        payloads: list[bytes] = []
        budget, more = max_bytes, True
        self.read_messages = 0
        while more and (budget > 0 or not payloads):
            self._renormalize()
            segment = self._segments[self._read.segment]
            if self._read.offset >= segment.size:
                break
            used, more = self._read_segment(segment, budget, payloads)
            budget -= used
        if payloads:
            if len(self._nth) >= NTH_CACHE_ENTRIES:
                self._nth.clear()  # only a shortcut: commit counts records when it misses
            self._nth[self._read] = self._read_nth
        return payloads, self._read

    def rewind(self) -> None:
        """Back to the committed position: what follows it will be read again."""
        self._read, self._read_nth = self._committed, self._committed_nth

    def commit(self, position: Position) -> None:
        """Everything before `position` (from `read`) has surely arrived. Never moves back."""
        position = self._normalized(Position(*position))
        if position > self._committed:
            nth = self._nth_at(position)
            self._committed, self._committed_nth = position, nth
            if self._read < position:
                self._read, self._read_nth = position, nth
            self._nth = {p: n for p, n in self._nth.items() if p > position}
            self._recount()
        self._maybe_persist()

    @property
    def corrupt_events(self) -> int:
        """Problems found (damaged regions skipped, parts set aside, bad cursors), each logged."""
        return self._repairs.events

    @property
    def corrupt_bytes(self) -> int:
        return self._repairs.bytes

    @property
    def committed(self) -> Position:
        return self._committed

    def close(self) -> None:
        """Flushes, fsyncs, saves the cursor and closes the files. Idempotent."""
        if self._closed:
            return
        self.flush()
        if self._buffer:
            logger.error(
                "spool %s: closing with %d records (%d bytes) that could not be written",
                self.directory, self._buffer_records, len(self._buffer),
            )  # fmt: skip
        self._close_writer(fsync=True)
        if self._committed != self._persisted:
            self._persist()
        self._close_reader()
        self._closed = True

    # -- recovery ---------------------------------------------------------------------------
    def _recover(self) -> Position:
        """Checks the segments from the cursor on; returns where the committed position is."""
        ids = []
        for segment_id in segment_ids(self.directory):
            path = self._path(segment_id)
            if path.is_symlink() or not path.is_file():
                self._repairs.problem("segment %s is not a regular file", path.name, aside=path)
            else:
                ids.append(segment_id)
        cursor, problem = read_cursor(self.directory / CURSOR_NAME)
        start, anomaly = resolve_start(ids, cursor)
        for message in (problem, anomaly):
            if message is not None:
                self._repairs.problem("cursor: %s; starting at %s", message, start)
        self._persisted = cursor
        self._write_id = max(ids[-1] + 1 if ids else 1, start.segment)
        for segment_id in ids:
            if segment_id < start.segment:
                self._delete(segment_id)  # consumed: a crash came between cursor and delete
                continue
            offset = start.offset if segment_id == start.segment else 0
            try:
                offset = self._recover_segment(segment_id, offset)
            except OSError as exc:  # EIO...: that segment is lost, the others are not
                self._segments.pop(segment_id, None)
                path = self._path(segment_id)
                self._repairs.problem("cannot use %s (%s)", path.name, exc, aside=path)
            if segment_id == start.segment:
                start = Position(segment_id, offset)
        self._segments[self._write_id] = _Segment()
        return start

    def _recover_segment(self, segment_id: int, offset: int) -> int:
        """Checks one segment from `offset`, cuts damaged bytes out and upgrades the old format;
        returns the offset reading starts at."""
        path = self._path(segment_id)
        data = path.read_bytes()
        if is_v1(data):
            data, offset = self._repairs.upgrade(path, data, offset)
        if offset > len(data):
            self._repairs.problem(
                "cursor offset %d is past the end of %s (%d bytes); sending all of it again",
                offset, path.name, len(data),
            )  # fmt: skip
            offset = 0
        found = survey(data, offset)
        if found.damage:
            self._repairs.cut(path, data, offset, found)
        size = offset + sum(end - start for start, end in found.spans)
        if size == 0:
            self._delete(segment_id)  # empty, and never the last one: a new one is written
        else:
            self._segments[segment_id] = _Segment(size, found.messages)
        return offset

    # -- writing ----------------------------------------------------------------------------
    def _make_room(self, size: int, force: bool, messages: int) -> bool:
        """The slow path of `append` when `size` more bytes would pass `max_bytes`."""
        if self.on_full == "drop_oldest":
            self._drop_oldest(size)
            return True
        if force or self._pending_bytes < self.max_bytes:
            return True
        self.dropped_newest += messages
        return False

    def _drop_oldest(self, size: int) -> None:
        dropped = 0
        while self._pending_bytes + size > self.max_bytes:
            if self._committed.segment != self._write_id:
                dropped += self._drop_segment(self._committed.segment)
            elif self._segments[self._write_id].size:
                self._roll()  # the segment being written is never deleted: finish it first
            else:
                break  # only the memory buffer is pending
        if dropped:
            self.dropped_oldest += dropped
            self._dropped_unlogged += dropped
            if self._drop_log.ready():
                logger.warning(
                    "spool %s: full (max_bytes %d): dropped the %d oldest messages (%d in all)",
                    self.directory, self.max_bytes, self._dropped_unlogged, self.dropped_oldest,
                )  # fmt: skip
                self._dropped_unlogged = 0

    def _drop_segment(self, segment_id: int) -> int:
        """Deletes the committed segment, unsent records and all; returns how many it had."""
        lost = self._segments[segment_id].records - self._committed_nth
        following = Position(self._next_id(segment_id), 0)
        self._delete(segment_id)
        self._committed, self._committed_nth = following, 0
        if self._read < following:
            self._read, self._read_nth = following, 0
        self._recount()
        return lost

    def _write_some(self) -> bool:
        """Writes what of the buffer fits in the current segment (or rolls: False)."""
        segment = self._segments[self._write_id]
        first = HEADER.size + LENGTH.unpack_from(self._buffer, LENGTH_AT)[0]
        if self._roll_needed or (segment.size and segment.size + first > self.segment_bytes):
            self._roll()
            return False
        length, count = self._chunk(self.segment_bytes - segment.size)
        fd = self._writer()
        with memoryview(self._buffer)[:length] as view:
            written = os.write(fd, view)
        if written != length:
            self._cut_back(fd, segment.size)
            raise OSError(errno.ENOSPC, f"short write ({written} of {length} bytes)")
        del self._buffer[:length]
        segment.size += length
        segment.records += count
        self._buffer_records -= count
        self._unsynced = True
        return True

    def _chunk(self, room: int) -> tuple[int, int]:
        """Bytes and messages of the records at the start of the buffer that fit in `room` (at
        least one record)."""
        buffer = self._buffer
        if len(buffer) <= room:
            return len(buffer), self._buffer_records
        offset = count = 0
        while offset < len(buffer):
            end = offset + HEADER.size + LENGTH.unpack_from(buffer, offset + LENGTH_AT)[0]
            if end > room and offset:
                break
            offset, count = end, count + LENGTH.unpack_from(buffer, offset + MESSAGES_AT)[0]
        return offset, count

    def _cut_back(self, fd: int, size: int) -> None:
        """Removes a partial write, so the segment still ends with a whole record."""
        try:
            os.ftruncate(fd, size)
        except OSError:
            self._roll_needed = True  # the tail is garbage: write on in a new segment

    def _roll(self) -> None:
        """Starts the next segment; the current one is complete from now on."""
        self._close_writer(fsync=self.fsync_policy != "never")
        self._write_id += 1
        self._segments[self._write_id] = _Segment()
        self._roll_needed = False
        self._renormalize()

    def _writer(self) -> int:
        if self._write_fd is None:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | OPEN_FLAGS
            self._write_fd = os.open(self._path(self._write_id), flags, FILE_MODE)
            if self.fsync_policy != "never":
                fsync_directory(self.directory)  # the new name must survive a power cut too
        return self._write_fd

    def _fsync_writer(self) -> None:
        if self._write_fd is None or not self._unsynced:
            return
        try:
            os.fsync(self._write_fd)
        except OSError as exc:
            if self._error_log.ready():
                logger.warning(
                    "spool %s: cannot fsync segment %d (%s)", self.directory, self._write_id, exc
                )
            return
        self._unsynced = False
        self._last_sync = self._clock()

    def _close_writer(self, *, fsync: bool) -> None:
        if self._write_fd is None:
            return
        if fsync:
            self._fsync_writer()
        fd, self._write_fd, self._unsynced = self._write_fd, None, False
        os.close(fd)  # forgotten first: a failing close has released the fd all the same

    # -- reading ----------------------------------------------------------------------------
    def _read_segment(
        self, segment: _Segment, budget: int, payloads: list[bytes]
    ) -> tuple[int, bool]:
        """Reads records of the read segment into `payloads`: (bytes used, whether to go on)."""
        segment_id, offset = self._read
        fd = self._reader(segment_id)
        available = segment.size - offset
        block = os.pread(fd, min(available, max(budget, HEADER.size)), offset)
        first = 0
        if len(block) >= HEADER.size:
            first = HEADER.size + LENGTH.unpack_from(block, LENGTH_AT)[0]
        if first > len(block):
            if payloads:
                return 0, False  # the next record is over the budget: next time
            if first <= available:
                block = os.pread(fd, first, offset)  # one record larger than the budget
        used, count, reason = scan(block, 0, payloads)
        self._read, self._read_nth = Position(segment_id, offset + used), self._read_nth + count
        self.read_messages += count
        if reason == "torn tail" and used:
            return used, False  # the block ended inside a record: the budget is used up
        if reason is not None or not used:
            self._cut_while_reading(segment, reason or "segment shorter than expected")
        return used, True

    def _cut_while_reading(self, segment: _Segment, reason: str) -> None:
        """Damage found after the start: cut it out up to the next valid record, as at open
        (the segment being written is finished first, as its file is replaced)."""
        segment_id, offset = self._read
        if segment_id == self._write_id:
            self._roll()
        path = self._path(segment_id)
        self._close_reader()  # the file is replaced: read the new one
        found = Survey([], 0, [])
        try:
            data = path.read_bytes()[: segment.size]
            found = survey(data, offset)
            if found.damage:
                self._repairs.cut(path, data, offset, found)
            elif len(data) < segment.size:
                self._repairs.problem(
                    "%s is shorter than written (%d of %d bytes)",
                    path.name, len(data), segment.size,
                )  # fmt: skip
        except OSError as exc:
            found = Survey([], 0, [])
            self._repairs.problem(
                "%s at offset %d of %s, not cut out (%s); skipping the rest of it",
                reason, offset, path.name, exc,
            )  # fmt: skip
        segment.size = offset + sum(end - start for start, end in found.spans)
        segment.records = self._read_nth + found.messages
        # positions past the damage have moved (or may be written again)
        self._nth = {
            p: n for p, n in self._nth.items() if p.segment != segment_id or p <= self._read
        }
        self._recount()

    def _reader(self, segment_id: int) -> int:
        if self._read_fd is None or self._read_fd_segment != segment_id:
            self._close_reader()
            self._read_fd = os.open(self._path(segment_id), os.O_RDONLY | OPEN_FLAGS)
            self._read_fd_segment = segment_id
        return self._read_fd

    def _close_reader(self) -> None:
        if self._read_fd is not None:
            fd, self._read_fd = self._read_fd, None
            os.close(fd)

    # -- positions and accounting -----------------------------------------------------------
    def _normalized(self, position: Position) -> Position:
        """`position`, moved over the ends of finished segments and over deleted ones."""
        if position.segment > self._write_id:
            raise ValueError(f"position {position} is past the segment being written")
        while position.segment != self._write_id:
            segment = self._segments.get(position.segment)
            if segment is not None and position.offset < segment.size:
                break
            position = Position(self._next_id(position.segment), 0)
        return position

    def _renormalize(self) -> None:
        committed = self._normalized(self._committed)
        if committed != self._committed:
            self._committed, self._committed_nth = committed, 0
        read = self._normalized(self._read)
        if read != self._read:
            self._read, self._read_nth = read, 0

    def _next_id(self, segment_id: int) -> int:
        return min(i for i in self._segments if i > segment_id)

    def _nth_at(self, position: Position) -> int:
        """How many messages of its segment come before `position` (after the committed one)."""
        segment_id, offset = position
        segment = self._segments[segment_id]
        if offset > segment.size:
            raise ValueError(f"position {position} is past the last record written")
        if offset == segment.size:
            return segment.records
        cached = self._nth.get(position)
        if cached is not None:
            return cached
        start, nth = (0, 0)
        if segment_id == self._committed.segment:
            start, nth = self._committed.offset, self._committed_nth
        data = os.pread(self._reader(segment_id), offset - start, start)
        end = 0
        while end + HEADER.size <= len(data):
            nth += LENGTH.unpack_from(data, end + MESSAGES_AT)[0]
            end += HEADER.size + LENGTH.unpack_from(data, end + LENGTH_AT)[0]
        if end != len(data):
            raise ValueError(f"position {position} is not at a record boundary")
        return nth

    def _recount(self) -> None:
        first = self._committed.segment
        on_disk = sum(s.size for i, s in self._segments.items() if i >= first)
        self._pending_bytes = on_disk - self._committed.offset + len(self._buffer)

    # -- cursor and files -------------------------------------------------------------------
    def _maybe_persist(self) -> None:
        if self._committed == self._persisted:
            return
        if self._clock() - self._last_persist >= self.cursor_interval_s:
            self._persist()

    def _persist(self) -> None:
        """Saves the cursor, then deletes the segments it says are consumed."""
        committed = self._committed
        try:
            write_cursor(self.directory, committed, fsync=self.fsync_policy != "never")
        except OSError as exc:
            if self._error_log.ready():
                logger.warning("spool %s: cannot save the cursor (%s)", self.directory, exc)
            return
        self._persisted, self._last_persist = committed, self._clock()
        for segment_id in [i for i in self._segments if i < committed.segment]:
            self._delete(segment_id)

    def _delete(self, segment_id: int) -> None:
        self._segments.pop(segment_id, None)
        if self._read_fd_segment == segment_id:
            self._close_reader()
        try:
            os.unlink(self._path(segment_id))
        except FileNotFoundError:
            pass  # never written (a segment file is created by its first write)
        except OSError as exc:
            logger.error("spool %s: cannot delete segment %d (%s)", self.directory, segment_id, exc)

    def _path(self, segment_id: int) -> Path:
        return self.directory / f"{segment_id:016d}.seg"
