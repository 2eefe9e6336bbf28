"""relay.forward.spool: order, at-least-once replay, crash recovery, corruption handling, full policies."""

from __future__ import annotations

import logging
import resource
import signal
import struct
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.forward.spool import Spool
from relay.forward.spool_disk import HEADER, MAGIC, Position, SpoolStats, inspect

T0 = 1_700_000_000.0


class FakeClock:
    """A pinned clock: cursor persistence and fsync intervals move only when a test says so."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(directory: Path, clock: FakeClock | None = None, **kwargs: Any) -> Spool:
    """A spool with test-friendly defaults: small segments, cursor saved on every commit."""
    options: dict[str, Any] = {
        "max_bytes": 1 << 20,
        "segment_bytes": 256,
        "fsync": "never",
        "cursor_interval_s": 0.0,
        "clock": clock or FakeClock(),
    }
    return Spool(directory, **(options | kwargs))


def payloads(count: int, size: int = 40, start: int = 0) -> list[bytes]:
    return [b"%06d:" % i + b"x" * (size - 7) for i in range(start, start + count)]


def fill(spool: Spool, items: list[bytes], at: float = T0) -> None:
    for item in items:
        assert spool.append(item, at)
    spool.flush()


def drain(spool: Spool, max_bytes: int = 256 * 1024) -> tuple[list[bytes], Position]:
    """Reads until nothing is left; returns everything read and the last position."""
    everything: list[bytes] = []
    while True:
        got, position = spool.read(max_bytes)
        if not got:
            return everything, position
        assert len(got) == 1 or sum(HEADER.size + len(p) for p in got) <= max_bytes
        everything += got


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def record(payload: bytes, at: float = T0, messages: int = 1) -> bytes:
    covered = struct.pack("<III", len(payload), int(at), messages)
    return MAGIC + struct.pack("<I", zlib.crc32(covered + payload)) + covered + payload


# -- order and delivery ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "segment_bytes, size, count, read_bytes",
    [
        pytest.param(256, 40, 50, 100, id="many-segments-small-reads"),
        pytest.param(256, 40, 50, 1 << 20, id="many-segments-one-read"),
        pytest.param(1 << 20, 40, 50, 100, id="one-segment"),
        pytest.param(100, 300, 5, 10, id="records-larger-than-segment-and-budget"),
        pytest.param(256, 0, 20, 64, id="empty-payloads"),
    ],
)
def test_round_trip_in_order(
    tmp_path: Path, segment_bytes: int, size: int, count: int, read_bytes: int
) -> None:
    spool = make(tmp_path, segment_bytes=segment_bytes)
    items = [b"%d" % i + b"." * size for i in range(count)]
    fill(spool, items)
    got, position = drain(spool, read_bytes)
    assert got == items
    spool.commit(position)
    assert spool.pending_records == 0
    assert spool.pending_bytes == 0
    assert len(segment_files(tmp_path)) == 1  # consumed segments deleted, the current one kept
    spool.close()


def test_segments_roll_at_segment_bytes(tmp_path: Path) -> None:
    spool = make(tmp_path, segment_bytes=200)
    fill(spool, payloads(10, size=80))  # 100-byte records: two per segment
    assert [f.stat().st_size for f in segment_files(tmp_path)] == [200] * 5
    assert spool.append(b"y" * 500, T0)  # larger than a segment: a fresh segment of its own
    spool.flush()
    assert [f.stat().st_size for f in segment_files(tmp_path)][-1] == 520
    spool.close()


def test_read_returns_only_flushed_records(tmp_path: Path) -> None:
    spool = make(tmp_path)
    spool.append(b"one", T0)
    assert spool.read() == ([], Position(1, 0))
    spool.flush()
    got, position = spool.read()
    assert got == [b"one"]
    assert position == Position(1, HEADER.size + 3)
    assert spool.read() == ([], position)
    spool.close()


def test_rewind_resends_from_committed(tmp_path: Path) -> None:
    spool = make(tmp_path)
    items = payloads(20)
    fill(spool, items)
    first, position = spool.read(300)
    spool.commit(position)
    second, _ = spool.read(300)
    assert first + second == items[: len(first) + len(second)]
    spool.rewind()
    again, _ = drain(spool)
    assert again == items[len(first) :]
    spool.close()


def test_commit_never_moves_back(tmp_path: Path) -> None:
    spool = make(tmp_path)
    fill(spool, payloads(20))
    _, early = spool.read(100)
    _, late = spool.read(100)
    spool.commit(late)
    spool.commit(early)
    assert spool.committed == late
    spool.close()


def test_commit_after_rewind_moves_the_reader_too(tmp_path: Path) -> None:
    spool = make(tmp_path)
    items = payloads(20)
    fill(spool, items)
    first, _ = spool.read(300)
    second, position = spool.read(300)
    spool.rewind()  # connection lost; then the ack of the second batch arrives after all
    spool.commit(position)
    assert drain(spool)[0] == items[len(first) + len(second) :]
    spool.close()


def test_commit_of_a_position_not_from_read_after_reopen(tmp_path: Path) -> None:
    spool = make(tmp_path, segment_bytes=1 << 20)
    fill(spool, payloads(10))  # 60-byte records
    spool.commit(Position(1, 2 * 60))
    spool.close()
    again = make(tmp_path, segment_bytes=1 << 20)
    assert again.pending_records == 8
    again.commit(Position(1, 4 * 60))  # counted from the cursor, not from the segment's start
    assert again.pending_records == 6
    assert drain(again)[0] == payloads(6, start=4)
    again.close()


def test_commit_of_a_position_not_from_read(tmp_path: Path) -> None:
    spool = make(tmp_path, segment_bytes=1 << 20)
    fill(spool, payloads(10))  # 60-byte records
    spool.commit(Position(1, 3 * 60))  # a record boundary: accepted, records counted
    assert spool.pending_records == 7
    with pytest.raises(ValueError, match="record boundary"):
        spool.commit(Position(1, 4 * 60 + 1))
    with pytest.raises(ValueError, match="past"):
        spool.commit(Position(9, 0))
    spool.close()


# -- restarts --------------------------------------------------------------------------------


def test_reopen_after_close_resumes_from_cursor(tmp_path: Path) -> None:
    spool = make(tmp_path)
    items = payloads(30)
    fill(spool, items)
    done, position = spool.read(500)
    spool.commit(position)
    spool.read(500)  # read but not committed: must come again
    spool.close()
    spool.close()  # idempotent

    again = make(tmp_path)
    assert again.pending_records == len(items) - len(done)
    got, _ = drain(again)
    assert got == items[len(done) :]
    again.close()


@pytest.mark.parametrize("flushed", [True, False], ids=["flushed", "unflushed"])
def test_reopen_without_close_replays_after_persisted_cursor(
    tmp_path: Path, clock: FakeClock, flushed: bool
) -> None:
    spool = make(tmp_path, clock, cursor_interval_s=10.0)
    items = payloads(30)
    fill(spool, items)
    first, position = spool.read(400)
    spool.commit(position)  # persisted: first persist is immediate
    clock.now += 1
    second, position = spool.read(400)
    spool.commit(position)  # within cursor_interval_s: not persisted
    assert second
    assert (tmp_path / "cursor").read_text() != f"{position.segment} {position.offset}\n"
    extra = payloads(3, start=100)
    for item in extra:
        spool.append(item, T0)
    if flushed:
        spool.flush()
    # SIGKILL: the object is abandoned, nothing more is written
    again = make(tmp_path, clock)
    got, _ = drain(again)
    assert got == items[len(first) :] + (extra if flushed else [])
    again.close()
    spool.close()  # only releases fds in this test; the data was already checked


def test_cursor_pointing_at_missing_segment(tmp_path: Path) -> None:
    spool = make(tmp_path)
    fill(spool, payloads(20))  # 60-byte records, 4 per segment: segments 1..5
    spool.close()
    (tmp_path / "0000000000000002.seg").unlink()
    (tmp_path / "cursor").write_text("2 112\n")
    again = make(tmp_path)
    got, _ = drain(again)
    assert got == payloads(12, start=8)  # segments 3, 4, 5
    again.close()


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"garbage\n", id="text"),
        pytest.param(b"\xff\xfe\x00", id="binary"),
        pytest.param(b"", id="empty"),
        pytest.param(b"1\n", id="one-field"),
        pytest.param(b"-1 5\n", id="negative"),
        pytest.param(b"0 0\n", id="segment-zero"),
        pytest.param(b"99 0\n", id="past-the-last-segment"),
    ],
)
def test_bad_cursor_starts_from_the_beginning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    spool = make(tmp_path)
    items = payloads(20)
    fill(spool, items)
    spool.close()
    (tmp_path / "cursor").write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="relay.forward.spool"):
        again = make(tmp_path)
    assert "cursor" in caplog.text
    assert drain(again)[0] == items
    again.close()


def test_cursor_past_all_segments_after_a_crash_between_save_and_delete(tmp_path: Path) -> None:
    spool = make(tmp_path)
    fill(spool, payloads(8))  # segments 1 and 2
    spool.close()
    (tmp_path / "cursor").write_text("3 0\n")  # segment 3 was opened but never written
    again = make(tmp_path)
    assert again.pending_records == 0
    assert segment_files(tmp_path) == []  # consumed ones deleted
    fill(again, [b"new"])
    assert drain(again)[0] == [b"new"]
    assert segment_files(tmp_path)[0].name == "0000000000000003.seg"
    again.close()


# -- corruption ------------------------------------------------------------------------------


def test_torn_tail_is_set_aside(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    spool = make(tmp_path, clock, segment_bytes=1 << 20)
    items = payloads(10)  # 60-byte records
    fill(spool, items)
    spool.close()
    segment = segment_files(tmp_path)[-1]
    data = segment.read_bytes()
    cut = 9 * 60 + 30  # the last record torn after 30 bytes
    segment.write_bytes(data[:cut])

    with caplog.at_level(logging.WARNING, logger="relay.forward.spool"):
        again = make(tmp_path, clock, segment_bytes=1 << 20)
    aside = tmp_path / f"{segment.name}.corrupt-{int(T0)}"
    assert aside.read_bytes() == data[9 * 60 : cut]
    assert segment.stat().st_size == 9 * 60
    assert (again.corrupt_events, again.corrupt_bytes) == (1, 30)
    assert "torn tail" in caplog.text
    assert segment.name in caplog.text
    assert "offset 540" in caplog.text
    assert "30 bytes" in caplog.text
    fill(again, [b"after"])
    assert drain(again)[0] == [*items[:9], b"after"]
    assert inspect(tmp_path).corrupt_files == 1
    again.close()


def test_rotten_byte_in_a_middle_segment(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = make(tmp_path)
    items = payloads(12)  # 60-byte records, 4 per 256-byte segment
    fill(spool, items)
    spool.close()
    middle = segment_files(tmp_path)[1]
    data = bytearray(middle.read_bytes())
    data[60 + 30] ^= 0xFF  # the payload of the middle segment's second record
    middle.write_bytes(bytes(data))

    with caplog.at_level(logging.WARNING, logger="relay.forward.spool"):
        again = make(tmp_path)
    assert "checksum mismatch" in caplog.text
    assert (again.corrupt_events, again.corrupt_bytes) == (1, 60)  # that record only
    [aside] = tmp_path.glob("*.corrupt-*")
    assert aside.read_bytes() == bytes(data[60:120])
    assert middle.read_bytes() == bytes(data[:60] + data[120:])
    assert drain(again)[0] == items[:5] + items[6:]
    again.close()


def test_rot_found_while_reading(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = make(tmp_path)
    items = payloads(12)
    fill(spool, items)
    middle = segment_files(tmp_path)[1]
    with middle.open("r+b") as file:  # the disk rots after the start
        file.seek(2 * 60 + 20)
        file.write(b"\x00\x01")
    with caplog.at_level(logging.WARNING, logger="relay.forward.spool"):
        got, _ = drain(spool, 100)
    assert got == items[:6] + items[7:]  # the damaged record only
    assert (spool.corrupt_events, spool.corrupt_bytes) == (1, 60)
    assert "checksum mismatch" in caplog.text
    assert spool.pending_records == 11
    spool.close()


def test_corrupt_length_while_reading_the_segment_being_written(tmp_path: Path) -> None:
    spool = make(tmp_path, segment_bytes=1 << 20)
    fill(spool, payloads(3))
    segment = segment_files(tmp_path)[0]
    with segment.open("r+b") as file:
        file.seek(60 + 8)
        file.write(struct.pack("<I", 1 << 30))  # second record's length runs past the end
    first, _, third = payloads(3)
    assert drain(spool)[0] == [first, third]  # the third is found again by its marker
    assert spool.corrupt_events == 1
    fill(spool, [b"later"])  # the segment goes on after its last good record
    assert drain(spool)[0] == [b"later"]
    spool.close()


def test_garbage_files_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "12.seg").write_bytes(b"not a segment name")
    (tmp_path / "0000000000000001.seg").write_bytes(b"\x00" * 40)  # all bad
    spool = make(tmp_path)
    assert spool.corrupt_bytes == 40
    assert spool.pending_records == 0
    fill(spool, [b"a"])
    assert drain(spool)[0] == [b"a"]
    spool.close()
    assert (tmp_path / "notes.txt").read_text() == "hello"


# -- full ------------------------------------------------------------------------------------


FULL_AT = [
    pytest.param(600, 10, id="exactly-full"),
    pytest.param(620, 11, id="not-full-until-past-max"),  # refused only once `full`
]


@pytest.mark.parametrize("max_bytes, fit", FULL_AT)
def test_drop_newest(tmp_path: Path, max_bytes: int, fit: int) -> None:
    spool = make(tmp_path, max_bytes=max_bytes, on_full="drop_newest")
    items = payloads(14)  # 60-byte records
    accepted = [spool.append(item, T0) for item in items]
    assert accepted == [True] * fit + [False] * (14 - fit)
    assert (spool.dropped_newest, spool.appended) == (14 - fit, fit)
    assert spool.full
    assert spool.append(b"forced", T0, force=True)
    spool.flush()
    assert drain(spool)[0] == [*items[:fit], b"forced"]
    spool.close()


@pytest.mark.parametrize("max_bytes, fit", FULL_AT)
def test_block_refuses_unforced_and_accepts_forced(
    tmp_path: Path, max_bytes: int, fit: int
) -> None:
    spool = make(tmp_path, max_bytes=max_bytes, on_full="block")
    for item in payloads(fit):
        assert not spool.full
        assert spool.append(item, T0)
    spool.flush()
    assert spool.full
    assert not spool.append(b"udp", T0)
    assert spool.append(b"tcp", T0, force=True)
    assert spool.dropped_newest == 1
    assert spool.pending_bytes == fit * 60 + HEADER.size + 3  # forced appends may pass max_bytes
    spool.flush()
    spool.commit(drain(spool)[1])
    assert not spool.full
    assert spool.append(b"udp", T0)
    spool.close()


def test_drop_oldest(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = make(tmp_path, max_bytes=600, on_full="drop_oldest")
    items = payloads(30)  # 60-byte records, 4 per segment
    with caplog.at_level(logging.WARNING, logger="relay.forward.spool"):
        for item in items:
            assert spool.append(item, T0)
            spool.flush()
    assert spool.pending_bytes <= 600
    assert spool.dropped_oldest % 4 == 0 and spool.dropped_oldest > 0
    assert caplog.text.count("dropped") == 1  # rate-limited
    got, position = drain(spool)
    assert got == items[spool.dropped_oldest :]  # whole segments from the oldest, then in order
    spool.commit(position)
    assert spool.pending_records == 0
    spool.close()


def test_drop_oldest_moves_the_reader_on(tmp_path: Path) -> None:
    spool = make(tmp_path, max_bytes=1000, on_full="drop_oldest")
    items = payloads(30)
    fill(spool, items[:8])
    got, position = spool.read(100)  # the reader is inside segment 1
    spool.commit(position)
    for item in items[8:]:
        spool.append(item, T0)
        spool.flush()
    rest, _ = drain(spool)
    assert got + rest == [items[0], *items[1 + spool.dropped_oldest :]]
    spool.close()


def test_drop_oldest_rolls_a_lone_segment(tmp_path: Path) -> None:
    spool = make(tmp_path, max_bytes=300, segment_bytes=1 << 20, on_full="drop_oldest")
    fill(spool, payloads(5))  # 300 bytes, all in the segment being written
    assert spool.append(b"z" * 40, T0)
    assert spool.dropped_oldest == 5
    spool.flush()
    assert drain(spool)[0] == [b"z" * 40]
    spool.close()


# -- accounting ------------------------------------------------------------------------------


def test_pending_and_oldest(tmp_path: Path) -> None:
    spool = make(tmp_path)
    assert (spool.pending_records, spool.pending_bytes, spool.oldest_at) == (0, 0, None)
    spool.append(b"a" * 10, T0 + 1)
    assert (spool.pending_records, spool.pending_bytes, spool.oldest_at) == (1, 30, T0 + 1)
    spool.flush()
    for i in range(2, 12):
        spool.append(b"b" * 10, T0 + i)
    assert (spool.pending_records, spool.pending_bytes) == (11, 11 * 30)
    spool.flush()
    got, position = spool.read(60)
    assert spool.pending_records == 11  # reading is not committing
    spool.commit(position)
    assert spool.pending_records == 11 - len(got)
    assert spool.pending_bytes == (11 - len(got)) * 30
    assert spool.oldest_at == T0 + 1 + len(got)
    spool.commit(drain(spool)[1])
    assert (spool.pending_records, spool.pending_bytes) == (0, 0)
    assert spool.oldest_at is None
    spool.close()


def test_inspect_matches_the_spool(tmp_path: Path) -> None:
    assert inspect(tmp_path / "missing") == SpoolStats(0, 0, None, 0, 0)
    spool = make(tmp_path)
    fill(spool, payloads(20), at=T0 + 5)
    fill(spool, payloads(5, start=20), at=T0 + 9)
    _, position = spool.read(300)
    spool.commit(position)
    stats = inspect(tmp_path, now=T0 + 100)
    assert stats.records == spool.pending_records
    assert stats.bytes == spool.pending_bytes
    assert stats.oldest_at == spool.oldest_at == T0 + 5
    assert stats.segments == len(segment_files(tmp_path))
    assert stats.corrupt_files == 0
    spool.close()


def test_inspect_is_read_only_and_skips_a_torn_tail(tmp_path: Path) -> None:
    spool = make(tmp_path, segment_bytes=1 << 20)
    fill(spool, payloads(4))
    segment = segment_files(tmp_path)[0]
    with segment.open("ab") as file:
        file.write(record(b"being written")[:10])  # a writer in the middle of a record
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    stats = inspect(tmp_path)
    assert (stats.records, stats.bytes) == (4, 4 * 60)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    spool.close()


def test_on_data_called_when_flush_writes(tmp_path: Path) -> None:
    spool = make(tmp_path)
    calls: list[int] = []
    spool.on_data = lambda: calls.append(spool.pending_records)
    spool.flush()
    assert calls == []
    spool.append(b"x", T0)
    spool.flush()
    assert calls == [1]
    spool.close()


@pytest.mark.parametrize("policy", ["never", "interval", "always"])
def test_fsync_policies(tmp_path: Path, clock: FakeClock, policy: str) -> None:
    spool = make(tmp_path, clock, fsync=policy, fsync_interval_s=1.0)
    for i in range(5):
        fill(spool, payloads(3, start=3 * i))
        clock.now += 0.6
        spool.sync()
    spool.close()
    again = make(tmp_path, clock)
    assert drain(again)[0] == payloads(15)
    again.close()


@pytest.fixture
def file_size_limit() -> Iterator[None]:
    """Lets writes past RLIMIT_FSIZE fail with EFBIG instead of killing the process."""
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    previous_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous_limit)
        signal.signal(signal.SIGXFSZ, previous_handler)


@pytest.mark.usefixtures("file_size_limit")
def test_write_error_keeps_the_buffer(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = make(tmp_path, segment_bytes=1 << 20)
    items = payloads(40)  # 60-byte records
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    fill(spool, items[:10])
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))  # the "disk" fills at 1000 bytes
    with caplog.at_level(logging.WARNING, logger="relay.forward.spool"):
        fill(spool, items[10:])
    assert "cannot write" in caplog.text
    assert segment_files(tmp_path)[0].stat().st_size == 600  # the short write was cut off
    assert spool.pending_records == 40
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    spool.flush()
    assert drain(spool)[0] == items
    spool.close()


# -- property: at least once, in order -------------------------------------------------------

OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 120)),
        st.tuples(st.just("flush"), st.just(0)),
        st.tuples(st.just("read"), st.integers(1, 400)),
        st.tuples(st.just("commit"), st.just(0)),
        st.tuples(st.just("rewind"), st.just(0)),
        st.tuples(st.just("reopen"), st.just(0)),
        st.tuples(st.just("crash"), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=50, deadline=None)
@given(operations=OPERATIONS, segment_bytes=st.sampled_from([64, 200, 4096]))
def test_every_record_is_read_at_least_once_in_order(
    operations: list[tuple[str, int]], segment_bytes: int
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        _check_model(Path(directory), operations, segment_bytes)


def _check_model(directory: Path, operations: list[tuple[str, int]], segment_bytes: int) -> None:
    """Runs `operations` against a spool and a model: `stream` is what must come out, in order;
    `flushed`, `committed` and `read` are counts of its prefix."""
    spool = make(directory, segment_bytes=segment_bytes)
    stream: list[bytes] = []
    flushed = committed = read = 0
    last_position = spool.committed
    abandoned = []
    for serial, (operation, argument) in enumerate(operations):
        if operation == "append":
            stream.append(b"%d:" % serial + b"p" * argument)
            spool.append(stream[-1], T0 + serial)
        elif operation == "flush":
            spool.flush()
            flushed = len(stream)
        elif operation == "read":
            got, last_position = spool.read(argument)
            assert got == stream[read : read + len(got)]
            assert read + len(got) <= flushed
            assert got or read == flushed
            read += len(got)
        elif operation == "commit":
            spool.commit(last_position)
            committed = read
        elif operation == "rewind":
            spool.rewind()
            # the position of what is read is the committed one again
            read, last_position = committed, spool.committed
        else:
            if operation == "reopen":
                spool.close()
                flushed = len(stream)
            else:  # crash: unflushed records are lost, the cursor was saved at commit
                abandoned.append(spool)
                del stream[flushed:]
            spool = make(directory, segment_bytes=segment_bytes)
            read, last_position = committed, spool.committed
        assert spool.pending_records == len(stream) - committed
    spool.close()
    final = make(directory, segment_bytes=segment_bytes)
    assert drain(final, 150)[0] == stream[committed:]
    final.close()
    for spool in abandoned:
        spool.close()  # releases fds; what it still writes is already checked above


@pytest.mark.parametrize("max_bytes", [1 << 20, 600], ids=["room", "nearly-full"])
def test_extend_is_append_for_a_batch(tmp_path: Path, max_bytes: int) -> None:
    """The hot path's batch append writes the same records and refuses the same ones."""
    items = payloads(10)
    one, many = (
        make(tmp_path / "one", max_bytes=max_bytes),
        make(tmp_path / "many", max_bytes=max_bytes),
    )
    refused_one = sum(not one.append(p, T0) for p in items)
    refused_many = many.extend(items, T0)
    one.flush()
    many.flush()
    assert refused_many == refused_one
    assert (many.pending_bytes, many.pending_records) == (one.pending_bytes, one.pending_records)
    assert [f.read_bytes() for f in segment_files(tmp_path / "many")] == [
        f.read_bytes() for f in segment_files(tmp_path / "one")
    ]
    assert drain(many)[0] == drain(one)[0]


def test_a_record_may_hold_several_messages(tmp_path: Path) -> None:
    """A forwarder spools a received batch as one record: counts are in messages throughout."""
    spool = make(tmp_path, segment_bytes=1 << 20, max_bytes=1000)
    assert spool.append(b"batch-of-3", T0, messages=3)
    assert spool.append(b"batch-of-5", T0, messages=5)
    assert spool.pending_records == 8 and spool.appended == 8
    spool.flush()
    got, _ = spool.read(100)
    assert (got, spool.read_messages) == ([b"batch-of-3", b"batch-of-5"], 8)
    spool.rewind()
    first, after_first = spool.read(HEADER.size + 10)
    assert (first, spool.read_messages) == ([b"batch-of-3"], 3)
    spool.commit(after_first)
    assert spool.pending_records == 5
    assert spool.append(b"x" * 1000, T0, messages=2)  # the record that fills it
    assert not spool.append(b"y", T0, messages=7)  # full: the whole batch is refused
    assert spool.dropped_newest == 7
    spool.close()
    assert inspect(tmp_path).records == 7
    again = make(tmp_path, segment_bytes=1 << 20)
    assert again.pending_records == 7  # counted from the records' headers at open
    assert drain(again)[0] == [b"batch-of-5", b"x" * 1000]
    again.close()
