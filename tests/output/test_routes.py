"""[[route]]: matching, stop/continue, and the templates of the routed lines."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from relay.config import Route
from relay.ingest.limits import SourceFilter
from relay.message import SyslogMessage
from relay.output.routes import NO_ROUTE, Outcome, Router
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


def header(program: bytes, tag: bytes, pri: int, msg: bytes = b" hi") -> SyslogMessage:
    return SyslogMessage(pri, b"h", tag, program, msg, b"", 1.0, "1.2.3.4")


@pytest.mark.parametrize(("rule", "program", "tag", "pri", "peer", "matched"), CASES)
def test_route_matching(
    rule: Route, program: bytes, tag: bytes, pri: int, peer: str, matched: bool
) -> None:
    router = Router([rule])
    assert (router.decide(program, tag, pri, peer) is not NO_ROUTE) == matched
    outcome = router.route(header(program, tag, pri), peer)
    if matched:
        assert [target.name(peer) for target in outcome.targets] == [rule.file]
        assert [target.template for target in outcome.targets] == [rule.template]
        assert outcome.ceelog is False  # stop is the default
    else:
        assert outcome == Outcome([], True, False)


def test_stop_false_continues_to_later_routes_and_ceelog() -> None:
    first = route(name="all", file="all.log", stop=False)
    second = route(name="auth", file="auth.log", match={"facilities": [4]})
    router = Router([first, second])
    auth = router.route(header(b"su", b"su:", 34), "1.2.3.4")
    assert [target.name("1.2.3.4") for target in auth.targets] == ["all.log", "auth.log"]
    assert auth.ceelog is False
    assert router.route(header(b"a", b"a:", 13), "1.2.3.4").ceelog is True


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


class Offers:
    """Stands in for forward.targets.Forwarders: records what the pipeline offers."""

    def __init__(self) -> None:
        self.offered: list[Any] = []

    def take(self, offered: list[Any], *_: Any) -> None:
        self.offered.extend(offered)


def test_routed_messages_are_offered_to_forwarding_once_and_dropped_ones_not() -> None:
    frames = [
        b"<190>Nov 26 21:00:01 web-1 nginx: " + ACCESS,  # routed (fast-path shape)
        b"<30>Nov 26 21:00:02 h NetworkManager[8]: do-add-ip6-address x",  # dropped
        b"<14>Nov 26 21:00:03 h app: other",  # no route
    ]
    drop = route(name="noise", file="", action="drop", match={"msg_contains": ["ip6-address"]})
    sink, offers = Lines(), Offers()
    pipeline = Pipeline(sink, routes=[NGINX, drop], forward=offers)  # type: ignore[arg-type]
    pipeline.handle_batch(frames, "10.244.2.8", 1.0)
    offered = [item if isinstance(item, tuple) else item.raw for item in offers.offered]
    assert [item[0] if isinstance(item, tuple) else item for item in offered] == [
        frames[0],
        frames[2],
    ]
    assert pipeline.route_dropped() == {"noise": 1}
    assert b"ip6" not in b"".join(line for lines in sink.files.values() for line in lines)


@pytest.mark.parametrize(
    ("needles", "msg", "dropped"),
    [
        (["a-b"], b" x a-b y", True),
        (["zz", "a-b"], b" x a-b y", True),  # any of them
        (["A-B"], b" x a-b y", False),  # as rsyslog's `contains`: case matters
        (["a-b"], b" x a- b", False),
    ],
)
def test_msg_contains(needles: list[str], msg: bytes, dropped: bool) -> None:
    router = Router([route(file="", action="drop", match={"msg_contains": needles})])
    assert router.route(header(b"a", b"a:", 13, msg), "1.2.3.4").dropped is dropped
    assert router.dropped == [int(dropped)]


def test_file_name_placeholder_is_the_source() -> None:
    rule = route(file="postfix-{ip}.log", template="plain", match={"programname_equals": "x"})
    sink = Lines()
    pipeline = Pipeline(sink, routes=[rule])
    pipeline.handle(b"<13>Nov 26 21:00:01 h x: one", "10.0.0.1", 1.0)
    pipeline.handle(b"<13>Nov 26 21:00:01 h x: two", "2001:db8::7", 1.0)
    assert sink.files == {
        "postfix-10.0.0.1.log": [b"h x:  one\n"],
        "postfix-2001:db8::7.log": [b"h x:  two\n"],
    }


def test_file_name_placeholder_is_the_trusted_origin() -> None:
    """Behind a relay, `{ip}` is the stamped origin, as the ceelog file name is."""
    rule = route(file="postfix-{ip}.log", template="plain", match={"programname_equals": "x"})
    sink = Lines()
    pipeline = Pipeline(sink, routes=[rule], trusted_relays=SourceFilter(["192.0.2.1/32"]))
    pipeline.handle(b"<13>Nov 26 21:00:01 h x: [origip=10.0.0.7] hi", "192.0.2.1", 1.0)
    assert sink.files == {"postfix-10.0.0.7.log": [b"h x:  hi\n"]}
