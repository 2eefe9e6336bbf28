"""A real Python `logging.handlers.SysLogHandler` over TCP: each record is `<PRI>message` + NUL,
no LF. With `listen.extra_frame_delimiter = 0` plura-relay files every record as its own
message, the same records rsyslogd writes with imtcp's `AddtlFrameDelimiter="0"`; without it
the records of a connection run together into one oversize message (rsyslog too, by default).
"""

from __future__ import annotations

import logging
import logging.handlers
import socket
import time
from pathlib import Path

import pytest

from tests.differential.replay import COMPARED_FIELDS
from tests.differential.test_relay_interop import plura_relay, rsyslogd
from tests.rsyslogd import LISTEN_HOST, free_port, read_ceelog, reference_conf, wait_for_lines

pytestmark = pytest.mark.differential

RECORDS = 300
TEXT = 'record {} of a Python program: user=kim action=login result=ok note="quoted" 한글'


def log_records(port: int, name: str) -> None:
    """RECORDS records through one SysLogHandler (one TCP connection), then close it."""
    handler = logging.handlers.SysLogHandler(
        address=(LISTEN_HOST, port), socktype=socket.SOCK_STREAM
    )
    handler.setFormatter(logging.Formatter("%(name)s[%(process)d]: %(message)s"))
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        for i in range(RECORDS):
            logger.warning(TEXT.format(i))
    finally:
        logger.removeHandler(handler)
        handler.close()


def records(path: Path, count: int) -> list[tuple[bytes, ...]]:
    wait_for_lines(path, count, timeout=15)
    time.sleep(0.3)  # a line too many would come right behind
    return [tuple(r[f] for f in COMPARED_FIELDS) for r in read_ceelog(path)]


@pytest.mark.timeout(120)
def test_sysloghandler_records_with_nul_delimiter_as_rsyslog(
    tmp_path: Path, rsyslogd_binary: str
) -> None:
    port, rsyslog_logs = free_port(), tmp_path / "rsyslog-logs"
    conf = reference_conf(rsyslog_logs, port, LISTEN_HOST, tmp_path / "rsyslogd")
    assert conf.count('module(load="imtcp")') == 1
    conf = conf.replace('module(load="imtcp")', 'module(load="imtcp" AddtlFrameDelimiter="0")')
    with (
        rsyslogd(rsyslogd_binary, tmp_path / "rsyslogd", conf, port, udp=True),
        plura_relay(tmp_path / "relay", "[listen]\nextra_frame_delimiter = 0\n") as relay,
        plura_relay(tmp_path / "default", "") as default,
    ):
        log_records(port, "pyapp")
        log_records(relay.port, "pyapp")
        log_records(default.port, "pyapp")
        expected = records(rsyslog_logs / "ceelog-127.0.0.1.log", RECORDS)
        got = records(relay.file("127.0.0.1"), RECORDS)
        run_together = records(default.file("127.0.0.1"), 1)
    assert got == expected
    assert len(got) == RECORDS
    msg = COMPARED_FIELDS.index("msg")
    assert [r[msg] for r in got] == [f" {TEXT.format(i)}".encode() for i in range(RECORDS)]
    assert {r[COMPARED_FIELDS.index("programname")] for r in got} == {b"pyapp"}
    assert len(run_together) == 1  # without the delimiter: one message, cut at 8096 bytes
    assert run_together[0][msg].count(b"#000<12>pyapp[") > 50
