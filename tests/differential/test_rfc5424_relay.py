"""The `rfc5424` forward format read by rsyslog's own RFC 5424 parser: the whole corpus, each
message sent straight to PLURA's rsyslogd collector from one address and, as a relay renders it
(`[origin ip=...]` added), from another; rsyslogd must see the same fields in both (hostname,
syslogtag, programname, PRI, msg), RFC 3164 and RFC 5424 input alike.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from relay.forward.upstream_format import render
from relay.parse import parse
from tests.differential.replay import (
    COMPARED_FIELDS,
    Stream,
    collect,
    group_by_marker,
    log_path,
    send_streams,
)
from tests.rsyslogd import (
    MAX_MESSAGE_BYTES,
    CorpusMessage,
    RsyslogdProcess,
    free_port,
    parse_ceelog_line,
    read_lines,
)

pytestmark = pytest.mark.differential

DIRECT, RELAYED = "127.0.0.2", "127.0.0.3"
AT = 1_700_000_000.25


def relayed(message: CorpusMessage) -> CorpusMessage | None:
    """The corpus message as a relay that received it from DIRECT sends it on; None where
    RFC 5424 cannot carry it (an invalid PRI) or it would not fit rsyslog's maxMessageSize."""
    # the relay parses as rsyslog does here (unterminated SD), to compare with rsyslog itself
    sent = parse(message.raw, received_at=AT, peer=DIRECT, rsyslog_sd=True)
    wire = render("rfc5424", sent, DIRECT)
    if sent.pri < 0 or len(wire) > MAX_MESSAGE_BYTES:
        return None
    return dataclasses.replace(message, raw=wire)


def fields(lines: list[bytes]) -> list[dict[str, bytes]]:
    return [{f: parse_ceelog_line(line)[f] for f in COMPARED_FIELDS} for line in lines]


@pytest.mark.timeout(120)
def test_rsyslog_reads_the_relayed_rfc5424_as_the_senders_message(
    tmp_path: Path, corpus: list[CorpusMessage], rsyslogd_binary: str
) -> None:
    pairs = [(m, r) for m in corpus if "udp" in m.transports and (r := relayed(m)) is not None]
    assert len(pairs) > 0.9 * len(corpus)
    streams = [
        Stream(DIRECT, tuple(m for m, _ in pairs)),
        Stream(RELAYED, tuple(r for _, r in pairs)),
    ]
    log_dir = tmp_path / "logs"
    with RsyslogdProcess(log_dir, free_port()) as rsyslogd:
        send_streams("udp", rsyslogd.port, streams)
        assert not collect("rsyslogd", log_dir, streams, 20.0).missing_sources
    direct, via_relay = (
        group_by_marker(read_lines(log_path(log_dir, source))) for source in (DIRECT, RELAYED)
    )
    differ = []
    for message, _ in pairs:
        want = fields(direct[message.id])
        for record in want:  # no tag: an empty APP-NAME reads back as `-`
            if record["syslogtag"] == b"":
                record.update(syslogtag=b"-", programname=b"-")
        got = fields(via_relay[message.id])
        if got != want:
            differ.append((message.id, want, got))
    assert not differ, differ[:5]
    assert sum(bool(direct[m.id]) for m, _ in pairs) > 0.9 * len(pairs)  # records to compare
