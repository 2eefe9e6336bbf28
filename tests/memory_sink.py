"""A line sink that keeps what it is given, for pipeline tests (no files)."""

from __future__ import annotations


class Lines:
    def __init__(self) -> None:
        self.files: dict[str, list[bytes]] = {}

    def append(self, name: str, line: bytes) -> None:
        self.files.setdefault(name, []).append(line)

    def extend(self, name: str, lines: list[bytes]) -> None:
        self.files.setdefault(name, []).extend(lines)

    def extend_block(self, name: str, block: bytes, count: int) -> None:
        """Kept as lines: the block must be exactly `count` LF-terminated lines."""
        *lines, rest = block.split(b"\n")
        lines = [line + b"\n" for line in lines]
        assert len(lines) == count and not rest, (count, block)
        self.files.setdefault(name, []).extend(lines)
