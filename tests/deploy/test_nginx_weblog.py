"""PLURA's web log three ways at once: one real nginx with conf/nginx/plura.conf logs each request
to its own file, as syslog to plura-relay (the shipped `nginx-weblog` route) and as syslog to a
real rsyslogd with PLURA's weblog rule (tag contains `nginx` -> weblog.log, `%msg%\\n`, stop).

For every request (quotes, backslashes, Korean text, a cookie, an empty, a 5 KB and a 10 KB POST
body; max_message_bytes raised as plura.conf advises): plura-relay's weblog.log line is
byte-identical to rsyslogd's, and its JSON part (after the space rsyslog keeps after `nginx:`)
to nginx's own file.
"""

from __future__ import annotations

import http.client
import time
from pathlib import Path

import pytest

from relay.node.rsyslog_conf import WEBLOG_TEMPLATE, weblog_rule
from tests.deploy.test_nginx_conf import start_nginx, substitute, wait_for_http, write_site
from tests.differential.test_relay_interop import plura_relay
from tests.differential.test_relay_interop import rsyslogd as running_rsyslogd
from tests.mod_plura import FIELDS, parse_mod_plura
from tests.rsyslogd import LISTEN_HOST, free_port, read_lines, stop_process, wait_for_lines

pytestmark = pytest.mark.differential

MAX_MESSAGE_BYTES = 32768
"""Raised on both receivers (plura.conf: bodies over ~8 KB need it)."""
SYSLOG_LINE = "access_log syslog:server=127.0.0.1:{port},tag=nginx mod_plura;"
KOREAN = "홍길동 로그인"
BODY_5K = ('{"note":"C:\\\\Users\\\\admin \\"quoted\\"","name":"' + KOREAN + '","pad":"').encode()
BODY_5K += b"a" * (5 * 1024 - len(BODY_5K) - 2) + b'"}'
BODY_10K = b"q=" + b"0123456789" * 1024
REQUESTS: list[tuple[str, str, bytes | None, dict[str, bytes]]] = [
    (
        "GET",
        "/%EA%B2%80%EC%83%89?q=%22x%22&path=C:%5Cdir",  # /검색: $uri is decoded, so UTF-8
        None,
        {
            "User-Agent": b'Mozilla/5.0 "quoted" \\backslash\\',
            "Referer": "https://shop.example.co.kr/상품".encode(),
            "Cookie": b'session=abc; lang=ko; q="a\\b"',
            "X-Forwarded-For": b"203.0.113.54",
        },
    ),
    ("POST", "/api/empty", b"", {"Content-Type": b"application/x-www-form-urlencoded"}),
    ("POST", "/api/5k", BODY_5K, {"Content-Type": b"application/json; charset=utf-8"}),
    ("POST", "/api/10k", BODY_10K, {"Content-Type": b"text/plain"}),
]
RELAY_TOML = f"""\
[listen]
max_message_bytes = {MAX_MESSAGE_BYTES}

[[route]]
name = "nginx-weblog"
file = "weblog.log"
template = "msg"
stop = true
[route.match]
syslogtag_contains = "nginx"
"""


def rsyslog_conf(log_dir: Path, port: int, work_dir: Path) -> str:
    return (
        f'global(net.enableDNS="off" maxMessageSize="{MAX_MESSAGE_BYTES}" '
        f'workDirectory="{work_dir}")\n'
        'module(load="imudp")\n'
        'module(load="imtcp")\n'  # unused: the start-up check waits for both
        f'input(type="imudp" port="{port}" address="{LISTEN_HOST}")\n'
        f'input(type="imtcp" port="{port}" address="{LISTEN_HOST}")\n'
        + WEBLOG_TEMPLATE
        + weblog_rule(str(log_dir))
    )


def request(
    port: int, method: str, path: str, body: bytes | None, headers: dict[str, bytes]
) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        assert (response.status, response.read()) == (200, b"ok\n")
    finally:
        connection.close()


@pytest.mark.timeout(120)
def test_weblog_through_plura_relay_is_rsyslogs_and_nginxs(
    nginx: str, rsyslogd: str, tmp_path: Path
) -> None:
    rsyslog_port, rsyslog_logs = free_port(), tmp_path / "rsyslog-logs"
    rsyslog_logs.mkdir()
    run_dir = tmp_path / "rsyslogd"
    conf = rsyslog_conf(rsyslog_logs, rsyslog_port, run_dir)
    with (
        running_rsyslogd(rsyslogd, run_dir, conf, rsyslog_port, udp=True),
        plura_relay(tmp_path / "relay", RELAY_TOML) as relay,
    ):
        site_dir = tmp_path / "nginx"
        site_dir.mkdir()
        site = write_site(
            site_dir, syslog_port=relay.port, http_port=free_port(), app_port=free_port()
        )
        own_file = site_dir / "weblog-nginx.log"
        plura = site_dir / "plura.conf"
        line = SYSLOG_LINE.format(port=relay.port)
        plura.write_text(
            substitute(
                plura.read_text(),
                line,
                f"{line}\n{SYSLOG_LINE.format(port=rsyslog_port)}\naccess_log {own_file} mod_plura;",
            )
        )
        proc = start_nginx(nginx, site.conf)
        try:
            wait_for_http(site.http_port, proc)
            for method, path, body, headers in REQUESTS:
                request(site.http_port, method, path, body, headers)
            own = wait_for_lines(own_file, len(REQUESTS))
        finally:
            stop_process(proc)
        via_relay = wait_for_lines(relay.log_dir / "weblog.log", len(REQUESTS))
        via_rsyslog = wait_for_lines(rsyslog_logs / "weblog.log", len(REQUESTS))
        time.sleep(0.2)  # a line too many would come right behind
        assert read_lines(relay.log_dir / "weblog.log") == via_relay
        assert not relay.file("127.0.0.1").exists(), "the route did not stop"
    assert via_relay == via_rsyslog
    assert [line[:1] for line in via_relay] == [b" "] * len(REQUESTS)
    assert [line[1:] for line in via_relay] == own
    logs = [parse_mod_plura(line.rstrip(b"\n")) for line in own]
    assert all(tuple(log) == FIELDS for log in logs)
    get, empty, five, ten = logs
    assert get["Uri"] == "/검색"
    assert get["User-Agent"] == 'Mozilla/5.0 "quoted" \\backslash\\'
    assert get["Cookie"] == 'session=abc; lang=ko; q="a\\b"'
    assert get["Referer"] == "https://shop.example.co.kr/상품"
    assert get["X-forwarded-for"] == "203.0.113.54"
    assert (empty["Req-Content-Length"], empty["Post-body"]) == ("0", "")  # read, and empty
    assert five["Post-body"].encode() == BODY_5K
    assert ten["Post-body"].encode() == BODY_10K
    assert len(via_relay[3]) > 10 * 1024  # over the default max_message_bytes
    assert b"\\xED\\x99\\x8D" in own[2]  # 홍 in nginx's default escaping
    assert b"\\x22quoted\\x22" in own[0] and b"\\x5Cbackslash\\x5C" in own[0]
