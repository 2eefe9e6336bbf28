"""The spool on disk, through real processes: corruption found at start is cut out and set
aside (logged, counted), and everything else, the records after the damage too, is delivered."""

from __future__ import annotations

import json
import re
import signal
import socket
import struct
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from relay.cli import main
from relay.forward.spool_disk import HEADER
from tests.integration.conftest import ServerProcess, free_port, octet, send_tcp

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
    # a zeroed block in the third segment, from inside one record into the next
    third = segments[2]
    third_records = _records(third)
    (zero_from, zeroed_a), (zero_to, zeroed_b) = third_records[1], third_records[2]
    with third.open("r+b") as f:
        f.seek(zero_from + 7)
        f.write(bytes(zero_to + 9 - zero_from - 7))
    # only the damaged records: the records after each damage are found again and sent
    lost = set(first_lost) | set(torn_seqs) | set(zeroed_a) | set(zeroed_b)

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
    assert log.count("skipped") == 3, log
    aside = sorted(p.name for p in spool.iterdir() if ".corrupt-" in p.name)
    assert [name.split(".corrupt-")[0] for name in aside] == [middle.name, third.name, last.name]
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
    assert row["corrupt_files"] == 3


# -- spool parts in the way: the receiver always starts ---------------------------------------


def _get(port: int, path: str) -> tuple[int, str]:
    deadline = time.monotonic() + 10  # a supervisor starts its HTTP server after the workers
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _metric(text: str, name: str) -> float:
    [value] = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name)]
    return value


def _in_the_way(state: Path, case: str, workers: int) -> None:
    """Puts something unusable where the spool needs a file or a directory."""
    spool = state / "spool"
    if case == "spool-root-is-a-file":
        state.mkdir(parents=True, exist_ok=True)
        spool.write_text("not a directory")
        return
    for worker in range(workers):
        directory = spool / "up" / f"w{worker}"
        if case == "worker-dir-is-a-file":
            directory.parent.mkdir(parents=True, exist_ok=True)
            directory.write_text("not a directory")
        else:
            name = "cursor" if case == "cursor-is-a-dir" else "0000000000000001.seg"
            (directory / name).mkdir(parents=True)


SET_ASIDE = [
    pytest.param("cursor-is-a-dir", "cursor is not a regular file: set aside", id="cursor"),
    pytest.param("segment-is-a-dir", ".seg is not a regular file: set aside", id="segment"),
    pytest.param("worker-dir-is-a-file", "is not a directory: set aside", id="spool-dir"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case, logged", SET_ASIDE)
def test_spool_parts_in_the_way_are_set_aside_and_the_target_runs(
    tmp_path: Path, workers: int, case: str, logged: str
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    b = ServerProcess(tmp_path / "b").start()
    conf = tmp_path / "a.toml"
    conf.write_text(f'[[forward]]\nname = "up"\nhost = "127.0.0.1"\nport = {b.port}\n')
    a = ServerProcess(tmp_path / "a", "--config", str(conf))
    metrics = free_port()
    a.args[a.args.index("--metrics") + 1] = f"127.0.0.1:{metrics}"
    _in_the_way(a.state_dir, case, workers)
    a.start()
    try:
        messages = [b"<13>Jan  5 10:11:12 pod app: seq=%04d" % n for n in range(50)]
        send_tcp(a.port, octet(messages), source="127.0.0.2")
        assert _wait_seqs(b.file("127.0.0.1"), 50) == set(range(50))  # forwarded
        assert _get(metrics, "/readyz") == (200, "ready\n")
        text = _get(metrics, "/metrics")[1]
        assert _metric(text, 'plura_relay_forward_spool_problems_total{target="up"}') == workers
        assert _metric(text, 'plura_relay_forward_spool_unusable{target="up"}') == 0
    finally:
        assert a.stop() == 0
        b.stop()
    assert a.log.count(logged) == workers, a.log
    assert "WARNING" in a.log and "Traceback" not in a.log


@pytest.mark.timeout(60)
def test_an_unusable_spool_directory_is_reported_and_the_rest_runs(
    tmp_path: Path, workers: int
) -> None:
    (tmp_path / "a").mkdir()
    conf = tmp_path / "a.toml"
    conf.write_text(f'[[forward]]\nname = "up"\nhost = "127.0.0.1"\nport = {free_port()}\n')
    a = ServerProcess(tmp_path / "a", "--config", str(conf))
    metrics = free_port()
    a.args[a.args.index("--metrics") + 1] = f"127.0.0.1:{metrics}"
    _in_the_way(a.state_dir, "spool-root-is-a-file", workers)
    a.start()
    try:
        send_tcp(a.port, octet([b"<13>Jan  5 10:11:12 pod app: seq=0001"] * 5), "127.0.0.2")
        assert _wait_seqs(a.file("127.0.0.2"), 1) == {1}  # the local files go on
        status, reason = _get(metrics, "/readyz")
        assert status == 503 and "forward up" in reason and "unusable" in reason, reason
        deadline = time.monotonic() + 5
        while True:  # workers report their stats every so often
            text = _get(metrics, "/metrics")[1]
            unusable = _metric(text, 'plura_relay_forward_spool_unusable{target="up"}')
            dropped = _metric(text, 'plura_relay_forward_dropped_no_spool_total{target="up"}')
            if dropped == 5 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert (unusable, dropped) == (workers, 5)
        assert a.file("127.0.0.2").read_bytes().count(b"\n") == 5
    finally:
        assert a.stop() == 0
    assert a.log.count("forward up: spool ") == workers, a.log
    assert "does not run until it is fixed" in a.log and "Traceback" not in a.log


@pytest.mark.timeout(60)
def test_a_spool_of_the_old_format_is_upgraded_and_delivered(tmp_path: Path) -> None:
    """A spool written before the record marker (format 1: crc, length, time, messages, a
    framed batch) is rewritten at start and sent, the cursor's offset moved with it."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    b = ServerProcess(tmp_path / "b").start()
    conf = tmp_path / "a.toml"
    conf.write_text(f'[[forward]]\nname = "up"\nhost = "127.0.0.1"\nport = {b.port}\n')
    a = ServerProcess(tmp_path / "a", "--config", str(conf))
    spool = a.state_dir / "spool" / "up" / "w0"
    spool.mkdir(parents=True)
    batches = [
        [b"<13>Jan  5 10:11:12 pod app: [origip=10.0.0.7] seq=%04d" % n for n in range(s, s + 100)]
        for s in range(0, 300, 100)
    ]
    records = []
    for batch in batches:
        framed = octet(batch)
        covered = struct.pack("<III", len(framed), int(time.time()), len(batch)) + framed
        records.append(struct.pack("<I", zlib.crc32(covered)) + covered)
    (spool / "0000000000000001.seg").write_bytes(b"".join(records))
    (spool / "cursor").write_text(f"1 {len(records[0])}\n")  # the first batch was delivered
    a.start()
    try:
        got = _wait_seqs(b.file("127.0.0.1"), 200)
    finally:
        assert a.stop() == 0
        b.stop()
    assert got == set(range(100, 300)), sorted(got)[:5]
    assert "was in the old record format 1: rewritten in format 2, 3 records kept" in a.log
