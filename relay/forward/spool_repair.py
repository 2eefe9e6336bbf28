"""What a spool does about damage to its files: renames aside what stands where it needs a
file or a directory, cuts damaged bytes out of a segment (kept beside it), upgrades a segment of
the old format; each logged as a WARNING and counted. The queue (relay.forward.spool) decides
when; the bytes and names are relay.forward.spool_disk's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from relay.forward.spool_disk import (
    CORRUPT_MARK,
    CURSOR_NAME,
    DIR_MODE,
    FILE_MODE,
    OPEN_FLAGS,
    Survey,
    cut_damage,
    move_aside,
    replace_file,
    seconds,
    upgrade_v1,
    write_new,
)

logger = logging.getLogger(__name__)

MAX_DAMAGE_LINES = 10  # per segment: a segment of garbage is summed up, not logged per region


class Repairs:
    """The repairs made in one spool directory, and their counters."""

    def __init__(self, directory: Path, clock: Callable[[], float], *, fsync: bool) -> None:
        self.directory = directory
        self.events = 0  # problems found: damaged regions, parts set aside, bad cursors
        self.bytes = 0  # damaged bytes set aside
        self._clock = clock
        self._fsync = fsync

    def prepare_directory(self) -> None:
        """Creates the directory; something else in its place is renamed aside first. Raises
        OSError if it cannot be created or written (the spool is then unusable)."""
        path = self.directory
        if (path.exists() or path.is_symlink()) and not path.is_dir():
            self.problem("%s is not a directory", path, aside=path)
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        probe = path / ".probe"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | OPEN_FLAGS, FILE_MODE))
        os.unlink(probe)
        for name in (CURSOR_NAME, f"{CURSOR_NAME}.tmp"):
            entry = path / name
            if entry.is_symlink() or (entry.exists() and not entry.is_file()):
                self.problem("%s is not a regular file", entry, aside=entry)

    def problem(self, message: str, *args: object, aside: Path | None = None) -> None:
        """Logs and counts one problem; `aside`: rename that path aside first."""
        self.events += 1
        text = message % args
        if aside is not None:
            text += f": set aside as {move_aside(aside, self._clock()).name}"
        logger.warning("spool %s: %s", self.directory, text)

    def upgrade(self, path: Path, data: bytes, offset: int) -> tuple[bytes, int]:
        """Rewrites a format-1 segment in format 2; returns its new bytes and where `offset`
        (a record boundary, or the record it falls in: sent again) is now."""
        upgraded, offsets, dropped = upgrade_v1(data)
        if dropped:
            aside = path.with_name(f"{path.name}{CORRUPT_MARK}{seconds(self._clock())}")
            kept = write_new(aside, data[len(data) - dropped :])
            self.bytes += dropped
            self.problem("%s: %d bytes after its last valid old-format record, set aside in %s",
                         path.name, dropped, kept.name)  # fmt: skip
        replace_file(path, upgraded, fsync=self._fsync)
        logger.warning(
            "spool %s: %s was in the old record format 1: rewritten in format 2, %d records kept",
            self.directory, path.name, len(offsets) - 1,
        )  # fmt: skip
        if offset > len(data):
            return upgraded, offset  # past the end: the caller says so and sends it all again
        return upgraded, offsets[max(o for o in offsets if o <= offset)]

    def cut(self, path: Path, data: bytes, start: int, found: Survey) -> None:
        """Cuts the damaged bytes `found` out of the segment at `path`; logs and counts each."""
        kept = cut_damage(path, data, start, found, self._clock(), fsync=self._fsync)
        where = kept.name if kept is not None else "nothing to keep"
        for n, damage in enumerate(found.damage):
            self.events += 1
            self.bytes += damage.end - damage.offset
            if n < MAX_DAMAGE_LINES:
                after = "the next valid record" if damage.end < len(data) else "the end"
                logger.warning(
                    "spool %s: %s at offset %d of %s: skipped %d bytes to %s (set aside in %s)",
                    self.directory, damage.reason, damage.offset, path.name,
                    damage.end - damage.offset, after, where,
                )  # fmt: skip
        if len(found.damage) > MAX_DAMAGE_LINES:
            logger.warning(
                "spool %s: %d more damaged regions in %s skipped (set aside in %s)",
                self.directory, len(found.damage) - MAX_DAMAGE_LINES, path.name, where,
            )  # fmt: skip
