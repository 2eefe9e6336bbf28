"""The corpus files and the comparison machinery, without any server (not marked differential)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tests.differential.replay import (
    compare_message,
    compare_records,
    group_by_marker,
    marker,
    plan,
)
from tests.rsyslogd import (
    CEE_FIELDS,
    CORPUS_DIR,
    MAX_MESSAGE_BYTES,
    TRANSPORTS,
    CorpusMessage,
    frame,
    load_corpus,
    parse_ceelog_line,
    render_ceelog_line,
)

LINE = (
    b'{"ceelog": {"timegenerated":"2026-11-26T19:58:05.036811+00:00", "programname":"su", '
    b'"hostname":"mymachine", "syslogtag":"su:", "pri":"34", "pri-text":"auth.crit", '
    b'"syslogfacility":"4", "syslogfacility-text":"auth", "syslogseverity":"2", '
    b'"syslogseverity-text":"crit", "msg":" \'su root\' failed on \\/dev\\/pts\\/8 \\"q\\" \xff"}}\n'
)


def test_corpus_is_large_distinct_and_well_formed(corpus: list[CorpusMessage]) -> None:
    assert len(corpus) >= 300
    assert len({m.raw for m in corpus}) == len(corpus), "duplicate payloads"
    assert len({m.id for m in corpus}) == len(corpus)
    per_origin = Counter(m.origin for m in corpus)
    assert len(per_origin) >= 10 and min(per_origin.values()) >= 10, per_origin
    assert all(m.note for m in corpus), [m.id for m in corpus if not m.note]


def test_lf_framing_only_gets_messages_it_cannot_desynchronise(corpus: list[CorpusMessage]) -> None:
    for m in corpus:
        if "tcp-lf" in m.transports:
            frames = m.raw.split(b"\n")
            assert not any(f[:1].isdigit() or len(f) > MAX_MESSAGE_BYTES for f in frames), m.id
        assert set(m.transports) <= set(TRANSPORTS)


def test_corpus_lines_use_b64_only_for_invalid_utf8(corpus: list[CorpusMessage]) -> None:
    by_id = {m.id: m for m in corpus}
    for path in sorted(CORPUS_DIR.glob("*.jsonl")):
        text = path.read_text(encoding="utf-8")
        assert len(text.splitlines()) == text.count("\n"), f"{path.name}: escape U+2028 and co."
        for lineno, line in enumerate(text.split("\n")[:-1], start=1):
            if "b64" in json.loads(line):
                with pytest.raises(UnicodeDecodeError):
                    by_id[f"{path.stem}-{lineno}"].raw.decode("utf-8")


def test_loader_rejects_unsafe_tcp_lf(tmp_path: Path) -> None:
    (tmp_path / "x.jsonl").write_text(
        json.dumps({"raw": "<13>a\n1 b", "note": "n", "transports": ["tcp-lf"]}) + "\n"
    )
    with pytest.raises(ValueError, match="unsafe for tcp-lf"):
        load_corpus(tmp_path)


def test_default_transports_keep_lf_digits_and_oversize_off_lf_framing(tmp_path: Path) -> None:
    raws = ["<13>a\nb", "1 2024", "<13>" + "x" * MAX_MESSAGE_BYTES, "<13>ok"]
    (tmp_path / "x.jsonl").write_text("".join(json.dumps({"raw": r}) + "\n" for r in raws))
    got = [m.transports for m in load_corpus(tmp_path)]
    assert got == [("udp", "tcp-octet")] * 3 + [TRANSPORTS]


def test_ceelog_line_round_trip() -> None:
    fields = parse_ceelog_line(LINE)
    assert list(fields) == list(CEE_FIELDS)
    assert fields["msg"] == b" 'su root' failed on /dev/pts/8 \"q\" \xff"
    assert render_ceelog_line(fields) == LINE
    assert (
        parse_ceelog_line(b'{"ceelog": {' + LINE[12:].replace(b"\\/", b"\\u002F"))["msg"]
        == (fields["msg"])
    )


@pytest.mark.parametrize("bad", [LINE[:-3] + b"\n", LINE.replace(b", ", b",", 1), b"{}\n"])
def test_parse_ceelog_line_rejects_other_layouts(bad: bytes) -> None:
    with pytest.raises(ValueError):
        parse_ceelog_line(bad)


def test_framing() -> None:
    assert frame("tcp-octet", b"<13>hi") == b"6 <13>hi"
    assert frame("tcp-lf", b"<13>hi") == b"<13>hi\n"
    assert frame("udp", b"<13>hi") == b"<13>hi"


def _line(**changes: bytes) -> bytes:
    return render_ceelog_line({**parse_ceelog_line(LINE), **changes})


def _marker_line(msg_id: str) -> bytes:
    return _line(hostname=b"corpus-marker", syslogtag=b"end:", programname=b"end",
                 msg=b" " + msg_id.encode())  # fmt: skip


def test_group_by_marker_attributes_zero_one_or_many_records() -> None:
    a, b = _line(msg=b" a"), _line(msg=b" b")
    lines = [a, _marker_line("x-1"), _marker_line("x-2"), a, b, _marker_line("x-3"), b]
    assert group_by_marker(lines) == {"x-1": [a], "x-2": [], "x-3": [a, b]}
    assert marker("x-1").endswith(b" corpus-marker end: x-1")


def test_comparison_reports_every_kind_of_difference() -> None:
    msg = CorpusMessage("x-1", b"<13>raw", "x", "note")
    assert (
        compare_message(msg, [LINE], [_line(timegenerated=b"2020-01-01T00:00:00.000001-05:00")])
        == []
    )
    assert compare_message(msg, [LINE], [_line(pri=b"13")]) == [
        "record 1: pri: rsyslog b'34' != plura-relay b'13'"
    ]
    assert (
        compare_message(msg, [LINE], [LINE, LINE])[0] == "record count: rsyslog 1 != plura-relay 2"
    )
    assert "missing" in compare_message(msg, [LINE], None)[0]
    assert "timegenerated" in compare_records(LINE, _line(timegenerated=b"2026-11-26T19:58:05Z"))[0]
    assert "not a ceelog line" in compare_records(LINE, b"garbage\n")[0]


def test_plan_sends_each_origin_from_its_own_address(corpus: list[CorpusMessage]) -> None:
    for transport in TRANSPORTS:
        streams = plan(corpus, transport)
        assert len({s.src_ip for s in streams}) == len(streams)
        sent = sorted(m.id for s in streams for m in s.messages)
        assert sent == sorted(m.id for m in corpus if transport in m.transports)
    assert any(len(m.raw) > MAX_MESSAGE_BYTES for m in corpus), "corpus lacks >8096 bytes"
