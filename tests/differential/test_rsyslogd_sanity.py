"""The reference alone: rsyslogd with PLURA's config, fed the corpus, and our readers of its files.

Needs rsyslogd but not plura-relay: if these fail, the differential comparison means nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.differential.replay import collect, log_path, origin_sources, plan, send_streams
from tests.rsyslogd import (
    CorpusMessage,
    RsyslogdProcess,
    free_port,
    parse_ceelog_line,
    read_ceelog,
    read_lines,
    render_ceelog_line,
    send,
    wait_for_lines,
)

pytestmark = pytest.mark.differential


@pytest.fixture(scope="module")
def udp_run(
    tmp_path_factory: pytest.TempPathFactory, corpus: list[CorpusMessage], rsyslogd_binary: str
) -> Iterator[tuple[Path, dict[str, list[CorpusMessage]]]]:
    """The whole corpus over UDP, one source address per origin, no markers."""
    log_dir = tmp_path_factory.mktemp("sanity") / "logs"
    sources = origin_sources(corpus)
    sent = {ip: [m for m in corpus if sources[m.origin] == ip] for ip in sources.values()}
    with RsyslogdProcess(log_dir, free_port()) as rsyslogd:
        for src_ip, messages in sent.items():
            send("udp", rsyslogd.port, src_ip, [m.raw for m in messages])
        for src_ip, messages in sent.items():
            wait_for_lines(log_path(log_dir, src_ip), len(messages), timeout=10)
    yield log_dir, sent


def test_one_line_per_udp_message_in_the_source_file(
    udp_run: tuple[Path, dict[str, list[CorpusMessage]]],
) -> None:
    log_dir, sent = udp_run
    expected_files = {log_path(log_dir, ip).name for ip in sent}
    assert {p.name for p in log_dir.glob("*.log")} == expected_files
    for src_ip, messages in sent.items():
        assert len(read_lines(log_path(log_dir, src_ip))) == len(messages), src_ip


def test_read_ceelog_round_trips_every_line(
    udp_run: tuple[Path, dict[str, list[CorpusMessage]]],
) -> None:
    log_dir, sent = udp_run
    not_utf8 = 0
    for src_ip in sent:
        for line in read_lines(log_path(log_dir, src_ip)):
            assert render_ceelog_line(parse_ceelog_line(line)) == line
            not_utf8 += not _is_utf8(line)
    assert not_utf8 > 0, "the corpus should make rsyslog write some lines that are not UTF-8"


def test_records_follow_the_message_order(
    udp_run: tuple[Path, dict[str, list[CorpusMessage]]],
) -> None:
    """Spot checks that line i is message i's record (and that this is PLURA's template)."""
    log_dir, sent = udp_run
    for src_ip, messages in sent.items():
        records = read_ceelog(log_path(log_dir, src_ip))
        for message, record in zip(messages, records, strict=True):
            if message.raw.startswith(b"<34>Oct 11 22:14:15 mymachine su: "):
                assert record["programname"] == b"su"
                assert record["pri-text"] == b"auth.crit"
                assert record["msg"] == b" 'su root' failed for lonvick on /dev/pts/8"
            if message.raw.startswith(b"<192>"):
                assert record["pri"] == b"invld"
                assert record["hostname"] == src_ip.encode()  # fallback: DNS is off
                assert record["msg"] == message.raw


@pytest.mark.parametrize("transport", ["udp", "tcp-lf", "tcp-octet"])
def test_every_marker_comes_back(
    transport: str, tmp_path: Path, corpus: list[CorpusMessage], rsyslogd_binary: str
) -> None:
    """The replay harness attributes records to every compared message on each transport."""
    streams = plan(corpus, transport)
    log_dir = tmp_path / "logs"
    with RsyslogdProcess(log_dir, free_port()) as rsyslogd:
        send_streams(transport, rsyslogd.port, streams)
        output = collect("rsyslogd", log_dir, streams, timeout=10)
    assert output.missing_sources == []
    compared = [m.id for s in streams for m in s.messages]
    assert sorted(output.groups) == sorted(compared)
    if transport == "udp":
        assert all(len(output.groups[i]) == 1 for i in compared)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
