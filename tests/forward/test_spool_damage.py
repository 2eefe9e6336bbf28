"""relay.forward.spool after damage to its files: exactly which messages survive.

A segment of six records (R0..R5) of three messages each; each case damages it (at open: while
the server was stopped; or while the spool is open) and lists the records whose messages must
still be read. Damage costs the damaged records only: the next valid record is found again by
its marker, every skip is logged and counted.
"""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from relay.forward.spool import Spool, SpoolUnusable
from relay.forward.spool_disk import HEADER, MAGIC, MAX_RECORD_MESSAGES, V1_HEADER, inspect

T0 = 1_700_000_000.0
RECORDS, PER_RECORD = 6, 3
PAYLOAD = 5 * PER_RECORD  # b"m%03d;" per message
SIZE = HEADER.size + PAYLOAD  # bytes per record


def open_spool(directory: Path) -> Spool:
    return Spool(directory, max_bytes=1 << 20, segment_bytes=1 << 20, fsync="never",
                 cursor_interval_s=0.0, clock=lambda: T0)  # fmt: skip


def message(record: int, n: int) -> bytes:
    return b"m%03d;" % (record * PER_RECORD + n)


def payload(record: int) -> bytes:
    return b"".join(message(record, n) for n in range(PER_RECORD))


def written(directory: Path, *, close: bool = True) -> Spool:
    spool = open_spool(directory)
    for record in range(RECORDS):
        assert spool.append(payload(record), T0, messages=PER_RECORD)
    spool.flush()
    if close:
        spool.close()
    return spool


def survivors(spool: Spool) -> list[int]:
    """The records read, by number (each payload is checked whole)."""
    got: list[bytes] = []
    while True:
        records, _ = spool.read(64)  # small reads: records are found across read boundaries
        if not records:
            break
        got += records
    numbers = [int(p[1:4]) // PER_RECORD for p in got]
    assert got == [payload(n) for n in numbers]
    return numbers


def at(record: int, field: int) -> int:
    return record * SIZE + field


Damage = Callable[[bytearray], bytearray]


def flip(offset: int) -> Damage:
    def damage(data: bytearray) -> bytearray:
        data[offset] ^= 0x5A
        return data

    return damage


def zero(start: int, end: int) -> Damage:
    def damage(data: bytearray) -> bytearray:
        data[start:end] = bytes(end - start)
        return data

    return damage


def insert(offset: int, garbage: bytes) -> Damage:
    def damage(data: bytearray) -> bytearray:
        data[offset:offset] = garbage
        return data

    return damage


def both(*damages: Damage) -> Damage:
    def damage(data: bytearray) -> bytearray:
        for each in damages:
            data = each(data)
        return data

    return damage


ALL = list(range(RECORDS))
WITHOUT_2 = [0, 1, 3, 4, 5]
# (damage to the segment's bytes, records that survive); R2 starts at 2 * SIZE
CASES = [
    pytest.param(flip(at(2, 0)), WITHOUT_2, id="magic-first-byte"),
    pytest.param(flip(at(2, 3)), WITHOUT_2, id="magic-last-byte"),
    pytest.param(flip(at(2, 4)), WITHOUT_2, id="crc"),
    pytest.param(flip(at(2, 7)), WITHOUT_2, id="crc-last-byte"),
    pytest.param(flip(at(2, 8)), WITHOUT_2, id="length-low-byte"),
    pytest.param(flip(at(2, 11)), WITHOUT_2, id="length-high-byte"),
    pytest.param(flip(at(2, 12)), WITHOUT_2, id="enqueued-at"),
    pytest.param(flip(at(2, 16)), WITHOUT_2, id="messages"),
    pytest.param(flip(at(2, HEADER.size)), WITHOUT_2, id="payload-first-byte"),
    pytest.param(flip(at(3, -1)), WITHOUT_2, id="payload-last-byte"),
    pytest.param(flip(at(0, 5)), [1, 2, 3, 4, 5], id="first-record"),
    pytest.param(flip(at(5, 9)), [0, 1, 2, 3, 4], id="last-record"),
    pytest.param(both(flip(at(1, 20)), flip(at(4, 2))), [0, 2, 3, 5], id="two-records"),
    pytest.param(zero(at(1, 10), at(3, 10)), [0, 4, 5], id="zeroed-block-across-three"),
    pytest.param(zero(at(2, 0), at(3, 0)), WITHOUT_2, id="zeroed-record-exactly"),
    pytest.param(insert(at(3, 0), b"\x00garbage\xff"), ALL, id="garbage-between-records"),
    pytest.param(insert(at(3, 0), MAGIC + b"\x01" * 30), ALL, id="false-marker-between"),
    pytest.param(
        both(flip(at(2, 20)), insert(at(2, 22), MAGIC + b"\x00" * 16)),
        WITHOUT_2,
        id="false-marker-inside-damage",
    ),
]


@pytest.mark.parametrize("damage, survive", CASES)
def test_damage_found_at_open_costs_the_damaged_records_only(
    tmp_path: Path, damage: Damage, survive: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    written(tmp_path)
    [segment] = tmp_path.glob("*.seg")
    segment.write_bytes(bytes(damage(bytearray(segment.read_bytes()))))
    assert inspect(tmp_path).records == len(survive) * PER_RECORD  # read-only, the same answer
    with caplog.at_level(logging.WARNING, logger="relay.forward.spool"):
        spool = open_spool(tmp_path)
    assert survivors(spool) == survive
    assert spool.pending_records == len(survive) * PER_RECORD
    assert spool.corrupt_events >= (survive != ALL)
    assert ("skipped" in caplog.text) == (spool.corrupt_events > 0)
    [aside] = tmp_path.glob("*.corrupt-*")  # the damaged bytes, kept for inspection
    assert aside.stat().st_size == spool.corrupt_bytes > 0
    spool.close()
    again = open_spool(tmp_path)  # rewritten without the damage: nothing more to report
    assert (again.corrupt_events, survivors(again)) == (0, survive)
    again.close()


IN_PLACE = [c for c in CASES if "between" not in str(c.id) and "inside" not in str(c.id)]


@pytest.mark.parametrize("damage, survive", IN_PLACE)
def test_damage_while_running_costs_the_damaged_records_only(
    tmp_path: Path, damage: Damage, survive: list[int]
) -> None:
    spool = written(tmp_path, close=False)
    [segment] = tmp_path.glob("*.seg")
    data = damage(bytearray(segment.read_bytes()))
    with segment.open("r+b") as file:  # rot in place: the writer's file keeps its size
        file.write(data[: RECORDS * SIZE])
    assert survivors(spool) == survive
    assert spool.corrupt_events >= 1
    assert spool.append(b"later", T0)
    spool.flush()
    assert spool.read()[0] == [b"later"]  # writing goes on after the damage, in a new segment
    spool.close()


def test_truncation_at_every_offset(tmp_path: Path) -> None:
    written(tmp_path / "whole")
    [segment] = (tmp_path / "whole").glob("*.seg")
    data = segment.read_bytes()
    for cut in range(len(data)):
        directory = tmp_path / f"cut-{cut}"
        directory.mkdir()
        (directory / segment.name).write_bytes(data[:cut])
        spool = open_spool(directory)
        whole = cut // SIZE
        assert survivors(spool) == list(range(whole)), cut
        assert spool.corrupt_bytes == cut - whole * SIZE, cut
        spool.close()


@pytest.mark.parametrize("offset", [RECORDS * SIZE + 1, 10**9], ids=["one-past", "far-past"])
def test_cursor_past_the_end_of_its_segment_sends_it_again(
    tmp_path: Path, offset: int, caplog: pytest.LogCaptureFixture
) -> None:
    written(tmp_path)
    (tmp_path / "cursor").write_text(f"1 {offset}\n")
    with caplog.at_level(logging.WARNING, logger="relay.forward.spool"):
        spool = open_spool(tmp_path)
    assert survivors(spool) == ALL  # at least once: never skipped without a word
    assert spool.corrupt_events == 1
    assert f"cursor offset {offset} is past the end of 0000000000000001.seg" in caplog.text
    spool.close()


def test_cursor_inside_a_record_resyncs_to_the_next(tmp_path: Path) -> None:
    written(tmp_path)
    (tmp_path / "cursor").write_text(f"1 {at(2, 7)}\n")
    spool = open_spool(tmp_path)
    assert survivors(spool) == [3, 4, 5]
    spool.close()


def v1_record(data: bytes, messages: int) -> bytes:
    covered = struct.pack("<III", len(data), int(T0), messages)
    return struct.pack("<I", zlib.crc32(covered + data)) + covered + data


@pytest.mark.parametrize(
    "cursor, tail, survive",
    [
        pytest.param(None, b"", ALL, id="whole"),
        pytest.param(f"1 {2 * (V1_HEADER.size + PAYLOAD)}", b"", [2, 3, 4, 5], id="cursor"),
        pytest.param(None, b"\x01\x02torn", ALL, id="torn-tail"),
    ],
)
def test_old_format_is_upgraded_and_sent(
    tmp_path: Path, cursor: str | None, tail: bytes, survive: list[int],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    segment = tmp_path / "0000000000000001.seg"
    segment.write_bytes(b"".join(v1_record(payload(r), PER_RECORD) for r in ALL) + tail)
    if cursor is not None:
        (tmp_path / "cursor").write_text(cursor + "\n")
    assert inspect(tmp_path).records == len(survive) * PER_RECORD
    with caplog.at_level(logging.WARNING, logger="relay.forward.spool"):
        spool = open_spool(tmp_path)
    assert "old record format 1" in caplog.text
    assert segment.read_bytes()[:4] == MAGIC
    assert survivors(spool) == survive
    assert spool.corrupt_bytes == len(tail)
    spool.close()
    again = open_spool(tmp_path)
    assert survivors(again) == survive  # the cursor was saved where the upgrade moved it
    again.close()


def test_a_record_holds_at_most_max_record_messages(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    assert spool.append(b"x", T0, messages=MAX_RECORD_MESSAGES)
    with pytest.raises(ValueError, match="expecting 1 to 64 messages"):
        spool.append(b"x", T0, messages=MAX_RECORD_MESSAGES + 1)
    spool.close()


# -- parts in the way ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cursor", "cursor.tmp", "0000000000000002.seg"])
def test_a_directory_in_place_of_a_file_is_set_aside(
    tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    written(tmp_path)
    (tmp_path / name).unlink(missing_ok=True)
    (tmp_path / name).mkdir()
    (tmp_path / name / "inside").write_text("kept")
    with caplog.at_level(logging.WARNING, logger="relay.forward.spool"):
        spool = open_spool(tmp_path)
    assert f"{name} is not a regular file: set aside as {name}.corrupt-{int(T0)}" in caplog.text
    assert (tmp_path / f"{name}.corrupt-{int(T0)}" / "inside").read_text() == "kept"
    assert spool.corrupt_events == 1
    assert survivors(spool) == ALL
    spool.commit(spool.read()[1])
    spool.close()  # the cursor can be saved again


def test_a_file_in_place_of_the_directory_is_set_aside(tmp_path: Path) -> None:
    (tmp_path / "w0").write_text("not a directory")
    spool = open_spool(tmp_path / "w0")
    assert spool.corrupt_events == 1
    assert (tmp_path / f"w0.corrupt-{int(T0)}").read_text() == "not a directory"
    assert spool.append(b"a", T0)
    spool.flush()
    assert spool.read()[0] == [b"a"]
    spool.close()


def test_a_directory_that_cannot_be_created_is_unusable(tmp_path: Path) -> None:
    (tmp_path / "spool").write_text("a file where the parent should be")
    with pytest.raises(SpoolUnusable, match=r"spool .*/spool/up/w0: "):
        open_spool(tmp_path / "spool" / "up" / "w0")
