"""[[route]]: matching, stop/continue, and the templates of the routed lines."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from relay.config import Route
from relay.output.routes import NO_ROUTE, Router, Target
from relay.parse import parse
from relay.pipeline import Pipeline
from tests.memory_sink import Lines


def route(**fields: Any) -> Route:
    return msgspec.convert({"name": "r", "file": "out.log", **fields}, Route)


NGINX = route(match={"syslogtag_contains": "nginx"}, template="msg", file="weblog.log")

CASES = [
    pytest.param(NGINX, b"nginx", b"nginx:", 190, "10.244.2.5", True, id="tag-contains"),
    pytest.param(NGINX, b"app", b"app[1]:", 190, "10.244.2.5", False, id="tag-does-not-contain"),
    pytest.param(route(match={"programname_equals": "sshd"}), b"sshd", b"sshd[9]:", 38, "1.2.3.4", True, id="program-equals"),
    pytest.param(route(match={"programname_equals": "sshd"}), b"sshd2", b"sshd2:", 38, "1.2.3.4", False, id="program-not-equal"),
    pytest.param(route(match={"programname_contains": "ss"}), b"sshd", b"sshd:", 38, "1.2.3.4", True, id="program-contains"),
    pytest.param(route(match={"syslogtag_equals": "su:"}), b"su", b"su:", 38, "1.2.3.4", True, id="tag-equals"),
    pytest.param(route(match={"facilities": [4, 10]}), b"su", b"su:", 4 * 8 + 2, "1.2.3.4", True, id="facility-in"),
    pytest.param(route(match={"facilities": [4, 10]}), b"su", b"su:", 1 * 8 + 2, "1.2.3.4", False, id="facility-out"),
    pytest.param(route(match={"severity_max": 3}), b"a", b"a:", 8 + 3, "1.2.3.4", True, id="severity-err"),
    pytest.param(route(match={"severity_max": 3}), b"a", b"a:", 8 + 4, "1.2.3.4", False, id="severity-warning"),
    pytest.param(route(match={"severity_max": 6}), b"", b"", -1, "1.2.3.4", False, id="invalid-pri-is-debug"),
    pytest.param(route(match={"source_cidrs": ["10.244.0.0/16"]}), b"a", b"a:", 13, "10.244.2.5", True, id="cidr-in"),
    pytest.param(route(match={"source_cidrs": ["10.244.0.0/16"]}), b"a", b"a:", 13, "10.245.2.5", False, id="cidr-out"),
    pytest.param(route(match={"source_cidrs": ["2001:db8::/32"]}), b"a", b"a:", 13, "2001:db8::7", True, id="cidr-v6"),
    pytest.param(route(), b"a", b"a:", 13, "1.2.3.4", True, id="empty-match-matches-all"),
    pytest.param(
        route(match={"syslogtag_contains": "nginx", "severity_max": 5}), b"nginx", b"nginx:", 190, "1.2.3.4", False,
        id="all-conditions-must-hold",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("rule", "program", "tag", "pri", "peer", "matched"), CASES)
def test_route_matching(
    rule: Route, program: bytes, tag: bytes, pri: int, peer: str, matched: bool
) -> None:
    decision = Router([rule]).decide(program, tag, pri, peer)
    assert (decision is not NO_ROUTE) == matched
    if matched:
        assert decision.targets == (Target(rule.file, rule.template),)
        assert decision.ceelog is False  # stop is the default


def test_stop_false_continues_to_later_routes_and_ceelog() -> None:
    first = route(name="copy", file="all.log", stop=False)
    second = route(name="auth", file="auth.log", match={"facilities": [4]})
    router = Router([first, second])
    assert router.decide(b"su", b"su:", 34, "1.2.3.4").targets == (
        Target("all.log", "ceelog"),
        Target("auth.log", "ceelog"),
    )
    assert router.decide(b"su", b"su:", 34, "1.2.3.4").ceelog is False
    assert router.decide(b"a", b"a:", 13, "1.2.3.4").ceelog is True


ACCESS = b'{"remote_addr":"10.244.2.6","request":"POST /api HTTP/1.1","request_body":"{\\"a\\":1}"}'


@pytest.mark.parametrize("shape", ["3164", "5424", "no-hostname"])
def test_nginx_access_line_goes_bare_to_weblog_and_not_to_ceelog(shape: str) -> None:
    frame = {
        "3164": b"<190>Nov 26 21:00:01 web-1 nginx: " + ACCESS,
        "5424": b"<190>1 2026-11-26T21:00:01Z web-1 nginx - - - " + ACCESS,
        "no-hostname": b"<190>Nov 26 21:00:01 nginx: " + ACCESS,
    }[shape]
    sink = Lines()
    Pipeline(sink, routes=[NGINX]).handle_batch(
        [frame, b"<14>Nov 26 21:00:02 web-1 app: other"], "10.244.2.8", 1.0
    )
    # rsyslog's %msg%: RFC 3164 keeps the space after `nginx:`, RFC 5424 has none
    space = b"" if shape == "5424" else b" "
    assert sink.files["weblog.log"] == [space + ACCESS + b"\n"]
    assert json.loads(sink.files["weblog.log"][0])["request_body"] == '{"a":1}'
    [other] = sink.files["ceelog-10.244.2.8.log"]
    assert b'"msg":" other"' in other


def test_raw_and_ceelog_templates() -> None:
    frame = b"<13>Nov 26 21:00:01 h app: tab\there"
    sink = Lines()
    routes = [
        route(file="raw.log", template="raw", stop=False),
        route(file="cee.log", template="ceelog"),
    ]
    Pipeline(sink, routes=routes).handle(frame, "10.0.0.1", 1.0)
    assert sink.files["raw.log"] == [b"<13>Nov 26 21:00:01 h app: tab#011here\n"]
    expected = Lines()
    Pipeline(expected).handle(frame, "10.0.0.1", 1.0)
    assert sink.files["cee.log"] == expected.files["ceelog-10.0.0.1.log"]
    assert "ceelog-10.0.0.1.log" not in sink.files
    assert parse(frame, received_at=1.0, peer="x").msg == b" tab#011here"
