"""The spool on disk, through real processes: corruption found at start is cut off and set
aside (logged, counted), and everything else is still delivered."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from pathlib import Path

from click.testing import CliRunner

from relay.cli import main
from relay.forward.spool_disk import HEADER
from tests.integration.conftest import ServerProcess, octet

COUNT = 400
SEQ = re.compile(rb"seq=(\d{4})")


def _records(segment: Path) -> list[tuple[int, list[int]]]:
    """(offset, seqs) of every record of a segment (a received batch, framed), read with the
    documented record layout."""
    data, offset, found = segment.read_bytes(), 0, []
    while offset + HEADER.size <= len(data):
        _, _, length, _, messages = HEADER.unpack_from(data, offset)
        payload = data[offset + HEADER.size : offset + HEADER.size + length]
        seqs = [int(n) for n in SEQ.findall(payload)]
        assert len(seqs) == messages
        found.append((offset, seqs))
        offset += HEADER.size + length
    return found


def _wait_seqs(path: Path, count: int, timeout_s: float = 15) -> set[int]:
    deadline = time.monotonic() + timeout_s
    while True:
        seqs = {int(n) for n in SEQ.findall(path.read_bytes())} if path.exists() else set()
        if len(seqs) >= count or time.monotonic() > deadline:
            return seqs
        time.sleep(0.1)


def test_torn_and_corrupt_segments_are_set_aside_and_the_rest_delivered(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    trust = tmp_path / "b.toml"
    trust.write_text('[origin]\ntrust_origip = true\ntrusted_sources = ["127.0.0.1/32"]\n')
    b = ServerProcess(tmp_path / "b", "--config", str(trust))  # not started: A spools everything
    conf = tmp_path / "a.toml"
    conf.write_text(
        f'[[forward]]\nname = "up"\nhost = "127.0.0.1"\nport = {b.port}\n'
        "segment_bytes = 8192\nreconnect_initial_s = 0.1\nreconnect_max_s = 0.3\n"
    )
    a = ServerProcess(tmp_path / "a", "--config", str(conf)).start()
    messages = [b"<13>Jan  5 10:11:12 pod app: seq=%04d %s" % (n, b"y" * 80) for n in range(COUNT)]
    with socket.create_connection(("127.0.0.1", a.port), source_address=("127.0.0.2", 0)) as sock:
        for start in range(0, COUNT, 10):  # small batches: many records, several segments
            sock.sendall(octet(messages[start : start + 10]))
            time.sleep(0.01)
    deadline = time.monotonic() + 10
    while (
        a.file("127.0.0.2").read_bytes().count(b"\n") < COUNT
        if a.file("127.0.0.2").exists()
        else True
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert a.stop(signal.SIGTERM) == 0
    # the worker the sender was steered to has the segments
    [spool] = [
        d for d in (tmp_path / "a" / "state" / "spool" / "up").iterdir() if any(d.glob("*.seg"))
    ]
    segments = sorted(spool.glob("*.seg"))
    assert len(segments) >= 4
    # a rotten byte in the middle of the second segment, and a torn last record in the last
    middle, last = segments[1], segments[-1]
    middle_records, last_records = _records(middle), _records(last)
    bad_offset, first_lost = middle_records[len(middle_records) // 2]
    data = bytearray(middle.read_bytes())
    data[bad_offset + HEADER.size + 5] ^= 0xFF
    middle.write_bytes(bytes(data))
    torn_offset, torn_seqs = last_records[-1]
    with last.open("r+b") as f:
        f.truncate(torn_offset + HEADER.size + 3)
    lost = {seq for _, seqs in middle_records for seq in seqs if seq >= first_lost[0]}
    lost |= set(torn_seqs)

    a.start()
    b.start()
    try:
        got = _wait_seqs(b.file("127.0.0.2"), COUNT - len(lost))
    finally:
        a.stop()
        b.stop()
    log = a.log
    assert got == set(range(COUNT)) - lost, sorted(set(range(COUNT)) - lost - got)[:10]
    assert "checksum mismatch" in log and "torn" in log, log
    aside = sorted(p.name for p in spool.iterdir() if ".corrupt-" in p.name)
    assert [name.split(".corrupt-")[0] for name in aside] == [middle.name, last.name]
    print(
        f"\nspool recovery: {COUNT} spooled, {len(lost)} set aside ({aside}), {len(got)} delivered"
    )
    a.stop()
    b.stop()
    stats = CliRunner().invoke(
        main,
        [
            "spool",
            "stats",
            "--config",
            str(conf),
            "--state-dir",
            str(tmp_path / "a" / "state"),
            "--json",
        ],
    )
    [row] = json.loads(stats.output)
    assert row["corrupt_files"] == 2
