"""FileSink on a disk that fills: whole lines only, exact counters, another writer's line never
cut. A real tmpfs, mounted per test; the only fake is the foreign writer's timing (below)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.output import files
from relay.output.files import FileSink
from tests.disks import small_tmpfs

NAME = "ceelog-10.0.0.1.log"


def _line(tag: str, i: int) -> bytes:
    return json.dumps({"m": f"{tag}-{i}", "pad": "p" * 400}).encode() + b"\n"


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "tmpfs", "256k") as mount:
        yield mount


def _fill(disk: Path, leave_bytes: int) -> Path:
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 65536):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    os.truncate(filler, filler.stat().st_size - leave_bytes)
    return filler


def _file_lines(path: Path) -> list[str]:
    data = path.read_bytes()
    assert data.endswith(b"\n"), data[-80:]
    return [json.loads(line)["m"] for line in data.split(b"\n")[:-1]]


@pytest.mark.parametrize("sinks", [1, 2], ids=["one-writer", "two-shared-writers"])
def test_a_full_disk_leaves_whole_lines_and_exact_counts(disk: Path, sinks: int) -> None:
    writers = [FileSink(disk) if sinks == 1 else FileSink(disk, shared=True) for _ in range(sinks)]
    filler = _fill(disk, leave_bytes=6 * 4096 + 100)
    for round_ in range(6):  # interleaved flushes of ~8.6 KB each, the disk fills on the way
        for w, sink in enumerate(writers):
            sink.extend(NAME, [_line(f"w{w}r{round_}", i) for i in range(20)])
            sink.flush()
    assert sum(s.lines_failed for s in writers) > 0
    filler.unlink()
    for w, sink in enumerate(writers):
        sink.extend(NAME, [_line(f"after{w}", i) for i in range(5)])
        sink.flush()
        sink.close()
    lines = _file_lines(disk / NAME)
    assert len(lines) == len(set(lines)) == sum(s.lines_written for s in writers)
    assert sum(s.lines_written + s.lines_failed for s in writers) == sinks * (6 * 20 + 5)
    assert sum(s.bytes_written for s in writers) == (disk / NAME).stat().st_size
    assert sum(line.startswith("after") for line in lines) == sinks * 5


def test_a_line_another_writer_appended_after_a_short_write_is_never_cut(
    disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another program appends right after the disk cut our write short (the fake: it does so
    inside the write call, which real timing only rarely gives): the partial line stays."""
    sink = FileSink(disk)
    filler = _fill(disk, leave_bytes=2 * 4096)
    real_write = os.write

    def write_then_foreign_append(fd: int, data: bytes | memoryview) -> int:
        written = real_write(fd, data)
        if written < len(data):
            os.truncate(filler, filler.stat().st_size - 4096)  # a page comes back, and then
            with open(disk / NAME, "ab") as other:  # the other program takes it
                other.write(b"x\n")
        return written

    monkeypatch.setattr(files.os, "write", write_then_foreign_append)
    sink.extend(NAME, [_line("mine", i) for i in range(40)])
    sink.flush()
    monkeypatch.undo()
    assert (disk / NAME).read_bytes().endswith(b"x\n")  # not cut
    assert sink.lines_written + sink.lines_failed == 40


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (b"", b""),  # nothing to heal
        (b"whole 1\n", b"whole 1\n"),
        (b"whole 1\nhalf of 2", b"whole 1\n"),  # a writer killed inside write(2)
        (b"half of 1", b""),
        (b"whole 1\n" + b"x" * 70_000, b"whole 1\n"),  # a long torn tail
    ],
)
@pytest.mark.parametrize("shared", [False, True])
def test_a_half_written_last_line_is_cut_before_the_next_one(
    tmp_path: Path, before: bytes, after: bytes, shared: bool
) -> None:
    """The next line starts on a line of its own, whole, after what was whole before."""
    (tmp_path / "ceelog-10.0.0.1.log").write_bytes(before)
    sink = FileSink(tmp_path, shared=shared)
    sink.append("ceelog-10.0.0.1.log", b"new\n")
    sink.close()
    assert (tmp_path / "ceelog-10.0.0.1.log").read_bytes() == after + b"new\n"
    assert sink.torn_tails == (after != before)


@pytest.mark.parametrize("blocks", [2, 7, 40], ids=["two-blocks", "seven-blocks", "forty-blocks"])
def test_a_flush_of_many_blocks_cut_short_by_the_disk_keeps_whole_lines(
    disk: Path, blocks: int
) -> None:
    """A busy file's flush is one writev of its blocks; when the disk cuts it short (inside a
    block or between two) the file still ends on a whole line and the counts are exact."""
    sink = FileSink(disk)
    _fill(disk, leave_bytes=3 * 4096 + 1500)
    sent = 0
    for b in range(blocks):  # one flush: every block buffered first
        lines = [_line(f"b{b}", i) for i in range(120 // blocks)]
        sink.extend(NAME, lines)
        sent += len(lines)
    sink.flush()
    assert sink.lines_failed > 0 and sink.lines_written > 0
    assert sink.lines_written + sink.lines_failed == sent
    kept = _file_lines(disk / NAME)  # ends with LF, every line parses
    assert len(kept) == sink.lines_written
    assert sink.bytes_written == (disk / NAME).stat().st_size


def test_a_flush_of_many_blocks_writes_them_all_in_order(tmp_path: Path) -> None:
    sink = FileSink(tmp_path)
    expected = []
    for b in range(5):
        lines = [_line(f"b{b}", i) for i in range(3)]
        expected += lines
        sink.extend(NAME, lines)
    sink.flush()
    assert (tmp_path / NAME).read_bytes() == b"".join(expected)
    assert sink.lines_written == 15 and sink.bytes_written == len(b"".join(expected))
