"""conf/nginx/: PLURA's mod_plura log format, checked and then run by a real nginx.

- `nginx -t` accepts plura.conf and the example server in the http {} context of a stock-like
  nginx.conf once ${NODE_IP} is substituted (and refuses the unsubstituted template);
- a real nginx on 127.0.0.1 sends one syslog datagram per request to a UDP socket bound here:
  `<190>TIMESTAMP HOST nginx: {...}`, PLURA's mod_plura object with exactly its keys in its
  order, nginx's default escaping, and the POST body (the example server proxies, so nginx
  reads the body; a body larger than client_body_buffer_size goes to a file and is logged as
  "-", as plura.conf says);
- tests/deploy/test_nginx_weblog.py runs nginx, plura-relay and rsyslogd together.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.conftest import NGINX_CONF, nginx_command, write_nginx_conf
from tests.mod_plura import FIELDS, parse_mod_plura
from tests.rsyslogd import free_port, stop_process

PLURA_CONF = NGINX_CONF / "plura.conf"
SERVER_CONF = NGINX_CONF / "plura-server.example.conf"
SYSLOG_TARGET = "syslog:server=${NODE_IP}:514,"
SYSLOG_LINE = re.compile(rb"<190>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ nginx: (\{.*\})", re.S)
TIMEOUT_S = 10.0


def start_nginx(nginx: str, conf: Path) -> subprocess.Popen[bytes]:
    """nginx in the foreground on a test config (stopped by the caller, by pid)."""
    return subprocess.Popen(
        nginx_command(nginx, conf, "-g", "daemon off;"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def substitute(text: str, old: str, new: str, count: int = 1) -> str:
    assert text.count(old) == count, f"expecting {old!r} {count} time(s)"
    return text.replace(old, new)


@dataclass
class Site:
    conf: Path
    http_port: int
    syslog_port: int


def write_site(directory: Path, *, syslog_port: int, http_port: int, app_port: int) -> Site:
    """plura.conf (syslog to 127.0.0.1:syslog_port) + the example server on local ports."""
    plura = substitute(
        PLURA_CONF.read_text(), SYSLOG_TARGET, f"syslog:server=127.0.0.1:{syslog_port},"
    )
    server = substitute(SERVER_CONF.read_text(), "listen 80;", f"listen 127.0.0.1:{http_port};")
    server = substitute(server, "127.0.0.1:8080", f"127.0.0.1:{app_port}", count=2)
    (directory / "plura.conf").write_text(plura)
    (directory / "plura-server.conf").write_text(server)
    conf = write_nginx_conf(
        directory, [str(directory / "plura.conf"), str(directory / "plura-server.conf")]
    )
    return Site(conf, http_port, syslog_port)


def test_nginx_accepts_plura_conf_in_http_context(nginx: str, tmp_path: Path) -> None:
    site = write_site(tmp_path, syslog_port=514, http_port=8000, app_port=8001)
    result = subprocess.run(
        nginx_command(nginx, site.conf, "-t"), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr


def test_nginx_refuses_the_unsubstituted_template(nginx: str, tmp_path: Path) -> None:
    (tmp_path / "plura.conf").write_text(PLURA_CONF.read_text())
    conf = write_nginx_conf(tmp_path, [str(tmp_path / "plura.conf")])
    result = subprocess.run(
        nginx_command(nginx, conf, "-t"), capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0
    assert "NODE_IP" in result.stderr


# --------------------------------------------------------------------------- live nginx


@pytest.fixture(scope="module")
def syslog_socket() -> Iterator[socket.socket]:
    """Where plura-relay would be: a UDP socket on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield s


def wait_for_http(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nginx not listening on 127.0.0.1:{port} after {TIMEOUT_S} s")


@pytest.fixture(scope="module")
def site(
    nginx: str, syslog_socket: socket.socket, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    """A real nginx (master + one worker) in the foreground, stopped by its pid."""
    directory = tmp_path_factory.mktemp("nginx")
    site = write_site(
        directory,
        syslog_port=syslog_socket.getsockname()[1],
        http_port=free_port(),
        app_port=free_port(),
    )
    proc = start_nginx(nginx, site.conf)
    try:
        wait_for_http(site.http_port, proc)
        yield site
    finally:
        stop_process(proc)


def request_and_log(
    site: Site, syslog_socket: socket.socket, request: urllib.request.Request
) -> tuple[bytes, dict[str, str]]:
    """Send `request`; the answer's body and the JSON of the one syslog message it caused."""
    syslog_socket.setblocking(False)
    while True:  # drop anything a previous test left
        try:
            syslog_socket.recv(65536)
        except BlockingIOError:
            break
    syslog_socket.settimeout(TIMEOUT_S)
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        answer = response.read()
    datagram = syslog_socket.recv(65536)
    match = SYSLOG_LINE.fullmatch(datagram)
    assert match, datagram
    return answer, parse_mod_plura(match[1])


JSON_BODY = json.dumps(
    {"user": "홍길동", "comment": 'C:\\Users\\admin "quoted"\nline 2', "url": "/a/b?c=d&e"},
    ensure_ascii=False,
).encode()
POSTS = [
    pytest.param(JSON_BODY, "application/json; charset=utf-8", JSON_BODY.decode(), id="json"),
    pytest.param(
        b"user=admin&pass=%27+or+1%3D1--", "application/x-www-form-urlencoded",
        "user=admin&pass=%27+or+1%3D1--", id="form",
    ),
    pytest.param(b"\x01\x02tab\there", "application/octet-stream", "\x01\x02tab\there", id="control-bytes"),
    pytest.param(b"x" * 40000, "text/plain", "-", id="over-client_body_buffer_size"),
]  # fmt: skip


@pytest.mark.parametrize("body, content_type, logged_body", POSTS)
def test_nginx_logs_post_body_as_syslog(
    site: Site, syslog_socket: socket.socket, body: bytes, content_type: str, logged_body: str
) -> None:
    url = f"http://127.0.0.1:{site.http_port}/api/v1/comments?draft=1"
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", content_type)
    answer, log = request_and_log(site, syslog_socket, request)
    assert answer == b"ok\n"  # the stand-in application answered: the body went through
    assert tuple(log) == FIELDS
    assert log["Post-body"] == logged_body
    assert log["Method"] == "POST"
    assert log["Uri"] == "/api/v1/comments"
    assert log["Request"] == "POST /api/v1/comments?draft=1 HTTP/1.1"
    assert log["Req-Content-Type"] == content_type
    assert log["Req-Content-Length"] == str(len(body))
    assert log["Status"] == "200"
    assert log["Resp-Content-Type"] == "text/plain"
    assert log["Resp-Content-Length"] == "3"
    assert re.fullmatch(r"Nginx/5\.5\.0\(\d+\.\d+\.\d+\)", log["ModPlura-version"])


def test_nginx_logs_request_headers(site: Site, syslog_socket: socket.socket) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{site.http_port}/index.html")
    headers = {
        "Host": "shop.example.co.kr",
        "X-Forwarded-For": "203.0.113.54",
        "Referer": "https://shop.example.co.kr/",
        "User-Agent": 'Mozilla/5.0 "quoted"',
        "Cookie": "session=abc; lang=ko",
    }
    for name, value in headers.items():
        request.add_header(name, value)
    _, log = request_and_log(site, syslog_socket, request)
    assert tuple(log) == FIELDS
    assert log["Remote-addr"] == "127.0.0.1"
    assert log["Host"] == "shop.example.co.kr"
    assert log["X-forwarded-for"] == "203.0.113.54"
    assert log["Referer"] == "https://shop.example.co.kr/"
    assert log["User-Agent"] == 'Mozilla/5.0 "quoted"'
    assert log["Cookie"] == "session=abc; lang=ko"
    assert log["Method"] == "GET"
    assert log["Post-body"] == "-"
    assert log["Req-Content-Length"] == "-"
    assert abs(float(log["Request-msec"]) - time.time()) < 60
    assert re.fullmatch(r"\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}", log["Request-date"])


def test_return_alone_does_not_read_the_body(
    nginx: str, syslog_socket: socket.socket, tmp_path: Path
) -> None:
    """Why the example server proxies: a location that only `return`s logs no body."""
    app_port = free_port()
    site = write_site(
        tmp_path,
        syslog_port=syslog_socket.getsockname()[1],
        http_port=free_port(),
        app_port=app_port,
    )
    server = tmp_path / "plura-server.conf"
    proxy = f"proxy_pass http://127.0.0.1:{app_port};"
    server.write_text(substitute(server.read_text(), proxy, 'return 200 "ok\\n";'))
    proc = start_nginx(nginx, site.conf)
    try:
        wait_for_http(site.http_port, proc)
        request = urllib.request.Request(
            f"http://127.0.0.1:{site.http_port}/", data=JSON_BODY, method="POST"
        )
        answer, log = request_and_log(site, syslog_socket, request)
    finally:
        stop_process(proc)
    assert answer == b"ok\n"
    assert log["Req-Content-Length"] == str(len(JSON_BODY))
    assert log["Post-body"] == "-"
