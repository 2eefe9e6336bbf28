"""A spool's files on disk: the record layout, segment and cursor files, checking records (and
finding them again after damage), the old format, and a read-only inspection. Knows nothing of
targets or sockets; relay.forward.spool is the queue on top.

A record (format 2) is `magic 4 bytes | crc32 u32 | length u32 | enqueued_at u32 (s) |
messages u32 | payload`, little endian; the CRC covers everything after itself. The magic lets a
reader find the next record after damaged bytes: the next magic followed by a record whose CRC
holds. A record holds at most MAX_RECORD_MESSAGES messages, so damage costs at most that many.
Format 1 (before the magic: `crc32 | length | enqueued_at | messages | payload`) is still read:
`upgrade_v1` turns such a segment into format 2. The cursor file holds `"<segment> <offset>\\n"`.
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

MAGIC = b"\xfe\xedR2"  # 0xFE never occurs in UTF-8 text: rare inside syslog payloads
HEADER = struct.Struct("<4sIIII")  # magic, crc32, payload length, enqueued_at (s), messages
CRC = struct.Struct("<I")
LENGTH = struct.Struct("<I")
LENGTH_AT = 8
AT_AT = 12
MESSAGES_AT = 16
COVERED_AT = 8  # the CRC covers the record from here on
COVERED = struct.Struct("<III")  # what the CRC covers, ahead of the payload
V1_HEADER = struct.Struct("<IIII")  # format 1: crc32, length, enqueued_at, messages
# A record holds at most this many messages: what one damaged byte can cost. A received batch
# (up to ~1,300 messages of 200 bytes per 256 KiB read) is split into records of this size;
# the cost per record (a header, a CRC call, a buffer append) spread over 64 messages is
# well under 1 % of the forwarding CPU, and 64 such messages are still ~13 KB per write.
MAX_RECORD_MESSAGES = 64
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


class Damage(NamedTuple):
    """Bytes `[offset, end)` of a segment that hold no valid record, and why."""

    offset: int
    end: int
    reason: str


class Survey(NamedTuple):
    """Every valid record of a segment from a start offset, found again after damage."""

    spans: list[tuple[int, int]]  # (offset, end) of each valid record, in order
    messages: int
    damage: list[Damage]


def check(data: bytes | memoryview, offset: int) -> tuple[int, int] | str:
    """The record at `offset`: (its end, its messages), or why it is not a valid record."""
    size = len(data)
    if size - offset < HEADER.size:
        return "torn tail"
    magic, crc, length, _, messages = HEADER.unpack_from(data, offset)
    if magic != MAGIC:
        return "no record marker"
    end = offset + HEADER.size + length
    if end > size:
        return "torn tail"
    if zlib.crc32(memoryview(data)[offset + COVERED_AT : end]) != crc:
        return "checksum mismatch"
    return end, messages


def scan(
    data: bytes, start: int, payloads: list[bytes] | None = None
) -> tuple[int, int, str | None]:
    """Checks the records in `data` from `start`, collecting payloads if asked, up to the first
    that is not valid: (end of the last good record, how many messages they hold, None or why
    the scan stopped early: "torn tail", "no record marker", "checksum mismatch")."""
    offset, count, size = start, 0, len(data)
    while offset < size:
        found = check(data, offset)
        if isinstance(found, str):
            return offset, count, found
        end, messages = found
        if payloads is not None:
            payloads.append(data[offset + HEADER.size : end])
        offset, count = end, count + messages
    return offset, count, None


def resync(data: bytes, offset: int) -> int:
    """The first offset after `offset` where a valid record starts, or len(data)."""
    at = data.find(MAGIC, offset + 1)
    while at != -1:
        if not isinstance(check(data, at), str):
            return at
        at = data.find(MAGIC, at + 1)
    return len(data)


def survey(data: bytes, start: int) -> Survey:
    """All valid records from `start`, skipping over damaged bytes to the next valid record."""
    spans: list[tuple[int, int]] = []
    damage: list[Damage] = []
    offset, count, size = start, 0, len(data)
    while offset < size:
        found = check(data, offset)
        if isinstance(found, str):
            following = resync(data, offset)
            reason = "torn tail" if following == size and found == "torn tail" else found
            damage.append(Damage(offset, following, reason))
            offset = following
            continue
        end, messages = found
        spans.append((offset, end))
        offset, count = end, count + messages
    return Survey(spans, count, damage)


def is_v1(data: bytes) -> bool:
    """Whether a segment is in format 1: no magic at its start, and a valid format-1 record
    there (format 2 damaged at its start has no valid format-1 record: its CRC would fail)."""
    if data[:4] == MAGIC or len(data) < V1_HEADER.size:
        return False
    crc, length, _, _ = V1_HEADER.unpack_from(data)
    end = V1_HEADER.size + length
    return end <= len(data) and zlib.crc32(memoryview(data)[4:end]) == int(crc)


def upgrade_v1(data: bytes) -> tuple[bytes, dict[int, int], int]:
    """A format-1 segment in format 2: (the new bytes, old record offset -> new offset, the bytes
    from the first bad format-1 record on, which are dropped)."""
    out, offsets, offset = bytearray(), {}, 0
    while offset + V1_HEADER.size <= len(data):
        crc, length, at, messages = V1_HEADER.unpack_from(data, offset)
        end = offset + V1_HEADER.size + length
        if end > len(data) or zlib.crc32(memoryview(data)[offset + 4 : end]) != crc:
            break
        offsets[offset] = len(out)
        out += encode(data[offset + V1_HEADER.size : end], at, messages)
        offset = end
    offsets[offset] = len(out)
    return bytes(out), offsets, len(data) - offset


def cut_damage(
    path: Path, data: bytes, start: int, found: Survey, at: float, *, fsync: bool
) -> Path | None:
    """Rewrites the segment `path` (whose bytes are `data`) as its bytes before `start` followed
    by the valid records of `found` only, after keeping the damaged bytes in
    `<name>.corrupt-<time>`; returns that file (None: no damaged bytes to keep). Offsets before
    `start` do not move, so a cursor or position there stays valid."""
    damaged = b"".join(data[d.offset : d.end] for d in found.damage)
    kept = write_new(path.with_name(f"{path.name}{CORRUPT_MARK}{seconds(at)}"), damaged)
    body = b"".join(data[offset:end] for offset, end in found.spans)
    replace_file(path, data[:start] + body, fsync=fsync)
    return kept if damaged else None


def encode(payload: bytes, at: int, messages: int) -> bytes:
    covered = COVERED.pack(len(payload), at, messages)
    return MAGIC + CRC.pack(zlib.crc32(payload, zlib.crc32(covered))) + covered + payload


def inspect(directory: str | os.PathLike[str], now: float | None = None) -> SpoolStats:
    """What a spool directory holds from its cursor on, read-only: it never changes a file, so it
    may run while a server writes (a torn tail is then simply not counted). `now` is accepted
    for callers that pass one; the stats hold absolute times, so nothing depends on it."""
    path = Path(directory)
    if not path.is_dir():
        return SpoolStats(0, 0, None, 0, 0)
    ids = segment_ids(path)
    try:
        cursor = read_cursor(path / CURSOR_NAME)[0]
    except OSError:
        cursor = None  # not a file: the server sets it aside
    start, _ = resolve_start(ids, cursor)
    records = size = 0
    oldest: float | None = None
    for segment_id in ids:
        if segment_id < start.segment:
            continue
        try:
            data = (path / f"{segment_id:016d}.seg").read_bytes()
        except OSError:
            continue  # consumed and deleted meanwhile, or not a file (set aside at start)
        begin = start.offset if segment_id == start.segment else 0
        if is_v1(data):
            data, offsets, _ = upgrade_v1(data)
            begin = offsets.get(begin, 0)
        found = survey(data, begin if begin <= len(data) else 0)
        if found.spans and oldest is None:
            oldest = float(HEADER.unpack_from(data, found.spans[0][0])[3])
        records += found.messages
        size += sum(end - offset for offset, end in found.spans)
    corrupt = sum(1 for name in os.listdir(path) if CORRUPT_MARK in name)
    return SpoolStats(records, size, oldest, len(ids), corrupt)


def segment_ids(directory: Path) -> list[int]:
    return sorted(
        int(m[1]) for name in os.listdir(directory) if (m := SEGMENT_NAME.fullmatch(name))
    )


def read_cursor(path: Path) -> tuple[Position | None, str | None]:
    """The committed position saved in `path`: (position or None, what is wrong with the file).
    Raises OSError if it cannot be read (a directory in its place, EIO)."""
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


def replace_file(path: Path, data: bytes, *, fsync: bool) -> None:
    """Replaces `path` with `data` atomically (a new file renamed over it)."""
    temporary = path.with_name(f"{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | OPEN_FLAGS, FILE_MODE)
    try:
        write_all(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


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


def move_aside(path: Path, at: float) -> Path:
    """Renames `path` (a file, directory or link in a place the spool needs) to
    `<name>.corrupt-<time>` (or `...-N` if taken); returns the new path."""
    aside = path.with_name(f"{path.name}{CORRUPT_MARK}{seconds(at)}")
    candidate, n = aside, 1
    while candidate.exists() or candidate.is_symlink():
        candidate, n = aside.with_name(f"{aside.name}-{n}"), n + 1
    os.rename(path, candidate)
    return candidate


def write_all(fd: int, data: bytes | memoryview) -> None:
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
