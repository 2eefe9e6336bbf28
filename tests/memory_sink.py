"""A line sink that keeps what it is given, for pipeline tests (no files)."""

from __future__ import annotations


class Lines:
    def __init__(self) -> None:
        self.files: dict[str, list[bytes]] = {}

    def append(self, name: str, line: bytes) -> None:
        self.files.setdefault(name, []).append(line)

    def extend(self, name: str, lines: list[bytes]) -> None:
        self.files.setdefault(name, []).extend(lines)
