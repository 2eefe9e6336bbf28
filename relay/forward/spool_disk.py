"""A spool's files on disk: the record layout, segment and cursor files, checking records, and a
read-only inspection. Knows nothing of targets or sockets; relay.forward.spool is the queue on top.

A record is `crc32 u32 | length u32 | enqueued_at u32 (s) | messages u32 | payload`, little
endian; the CRC covers everything after itself. The cursor file holds `"<segment> <offset>\\n"`.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

logger = logging.getLogger(__name__)

HEADER = struct.Struct("<IIII")  # crc32, payload length, enqueued_at (s), messages in it
CRC = struct.Struct("<I")
LENGTH = struct.Struct("<I")
MESSAGES = struct.Struct("<I")  # at offset 12
COVERED = struct.Struct("<III")  # what the CRC covers, ahead of the payload
MAX_U32 = 0xFFFFFFFF
SEGMENT_NAME = re.compile(r"(\d{16})\.seg")
CURSOR_NAME = "cursor"
CORRUPT_MARK = ".corrupt-"
DIR_MODE = 0o750
FILE_MODE = 0o640
MAX_SEGMENT_ID = 10**16 - 1  # what fits in the 16-digit name
OPEN_FLAGS = os.O_CLOEXEC


class Position(NamedTuple):
    segment: int
    offset: int


class SpoolStats(NamedTuple):
    records: int
    bytes: int  # record bytes, headers included
    oldest_at: float | None
    segments: int
    corrupt_files: int


def inspect(directory: str | os.PathLike[str], now: float | None = None) -> SpoolStats:
    """What a spool directory holds from its cursor on, read-only: it never changes a file, so it
    may run while a server writes (a torn tail is then simply not counted). `now` is accepted
    for callers that pass one; the stats hold absolute times, so nothing depends on it."""
    path = Path(directory)
    if not path.is_dir():
        return SpoolStats(0, 0, None, 0, 0)
    ids = segment_ids(path)
    start, _ = resolve_start(ids, read_cursor(path / CURSOR_NAME)[0])
    records = size = 0
    oldest: float | None = None
    for segment_id in ids:
        if segment_id < start.segment:
            continue
        try:
            data = (path / f"{segment_id:016d}.seg").read_bytes()
        except FileNotFoundError:
            continue  # consumed and deleted meanwhile
        begin = min(start.offset, len(data)) if segment_id == start.segment else 0
        end, count, _ = scan(data, begin)
        if count and oldest is None:
            oldest = float(HEADER.unpack_from(data, begin)[2])
        records, size = records + count, size + end - begin
    corrupt = sum(1 for name in os.listdir(path) if CORRUPT_MARK in name)
    return SpoolStats(records, size, oldest, len(ids), corrupt)


def scan(
    data: bytes, start: int, payloads: list[bytes] | None = None
) -> tuple[int, int, str | None]:
    """Checks the records in `data` from `start`, collecting payloads if asked: (end of the last
    good record, how many messages they hold, None or why the scan stopped early: "torn tail",
    "checksum mismatch")."""
    view = memoryview(data)
    offset, count, size = start, 0, len(data)
    while offset < size:
        if size - offset < HEADER.size:
            return offset, count, "torn tail"
        crc, length, _, messages = HEADER.unpack_from(data, offset)
        end = offset + HEADER.size + length
        if end > size:
            return offset, count, "torn tail"
        if zlib.crc32(view[offset + 4 : end]) != crc:
            return offset, count, "checksum mismatch"
        if payloads is not None:
            payloads.append(data[offset + HEADER.size : end])
        offset, count = end, count + messages
    return offset, count, None


def segment_ids(directory: Path) -> list[int]:
    return sorted(
        int(m[1]) for name in os.listdir(directory) if (m := SEGMENT_NAME.fullmatch(name))
    )


def read_cursor(path: Path) -> tuple[Position | None, str | None]:
    """The committed position saved in `path`: (position or None, what is wrong with the file)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, None
    fields = raw.split()
    if len(fields) != 2 or not all(f.isdigit() for f in fields):
        return None, f"expecting '<segment> <offset>', got {raw[:40]!r}"
    position = Position(int(fields[0]), int(fields[1]))
    if not 1 <= position.segment <= MAX_SEGMENT_ID:
        return None, f"segment {position.segment} out of range"
    return position, None


def resolve_start(ids: list[int], cursor: Position | None) -> tuple[Position, str | None]:
    """Where reading starts, given the segments on disk and the saved cursor."""
    if cursor is None:
        return Position(ids[0] if ids else 1, 0), None
    if cursor.segment in ids:
        return cursor, None
    later = [i for i in ids if i > cursor.segment]
    if later:
        return Position(later[0], 0), None  # its segment is gone (dropped or empty)
    if not ids or cursor.segment == ids[-1] + 1:
        return Position(cursor.segment, 0), None  # all consumed; that segment was never written
    return Position(ids[0], 0), f"{cursor} is past the last segment {ids[-1]}"


def write_cursor(directory: Path, position: Position, *, fsync: bool) -> None:
    """Replaces the cursor file atomically: a reader sees the old or the new one, never a mix."""
    temporary = directory / f"{CURSOR_NAME}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | OPEN_FLAGS, FILE_MODE)
    try:
        write_all(fd, b"%d %d\n" % position)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, directory / CURSOR_NAME)


def write_new(path: Path, data: bytes) -> Path:
    """Writes `data` to `path`, or to `path-N` if that exists already; returns which."""
    candidate, n = path, 1
    while True:
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | OPEN_FLAGS, FILE_MODE)
        except FileExistsError:
            candidate, n = path.with_name(f"{path.name}-{n}"), n + 1
            continue
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        return candidate


def write_all(fd: int, data: bytes) -> None:
    with memoryview(data) as view:
        written = 0
        while written < len(view):
            written += os.write(fd, view[written:])


def fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | OPEN_FLAGS)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:  # some filesystems refuse it; the data itself is fsynced anyway
        logger.debug("spool %s: cannot fsync the directory (%s)", directory, exc)


def seconds(at: float) -> int:
    """A record's time, in whole seconds (the header's u32; the age of a backlog is in s)."""
    return min(max(int(at), 0), MAX_U32)
