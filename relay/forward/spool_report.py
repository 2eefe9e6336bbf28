"""`plura-relay spool stats`: what each forward target's spool holds, read from disk.

Read-only: safe while a server is writing (a record being written is simply not counted yet).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import NamedTuple

from relay.forward.spool_disk import inspect


class TargetSpool(NamedTuple):
    target: str
    records: int
    bytes: int
    oldest_age_s: float | None
    segments: int
    corrupt_files: int
    workers: int  # spool directories (one per worker that has run)


def spool_report(
    state_dir: str, configured: list[str], now: float | None = None
) -> list[TargetSpool]:
    """Every configured target (empty if it never spooled) and any other spool found."""
    now = time.time() if now is None else now
    root = Path(state_dir) / "spool"
    found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    report = []
    for name in [*configured, *(n for n in found if n not in configured)]:
        records = size = segments = corrupt = 0
        oldest: float | None = None
        directories = sorted((root / name).glob("w*")) if (root / name).is_dir() else []
        # a worker's spool, not what was set aside in place of one (`w0.corrupt-<time>`)
        directories = [d for d in directories if d.name[1:].isdigit() and d.is_dir()]
        for directory in directories:
            stats = inspect(directory, now)
            records += stats.records
            size += stats.bytes
            segments += stats.segments
            corrupt += stats.corrupt_files
            if stats.oldest_at is not None:
                oldest = stats.oldest_at if oldest is None else min(oldest, stats.oldest_at)
        age = None if oldest is None else max(0.0, now - oldest)
        report.append(TargetSpool(name, records, size, age, segments, corrupt, len(directories)))
    return report


def format_report(report: list[TargetSpool]) -> str:
    if not report:
        return "no forward targets configured and no spool found"
    head = f"{'TARGET':<20} {'RECORDS':>10} {'BYTES':>14} {'OLDEST':>10} {'SEGMENTS':>8} CORRUPT"
    lines = [head]
    for row in report:
        age = "-" if row.oldest_age_s is None else _age(row.oldest_age_s)
        lines.append(
            f"{row.target:<20} {row.records:>10} {row.bytes:>14} {age:>10} {row.segments:>8} "
            f"{row.corrupt_files}"
        )
    return "\n".join(lines)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
