"""Syslog over TLS between relay A and collector B: certificates checked on both sides."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.integration.conftest import octet, running_server, send_tcp, wait_for_lines

MESSAGES = [b"<13>Jan  5 10:11:12 pod-a app[1]: over tls %d" % n for n in range(20)]


class Pki:
    """A CA, the collector's certificate (for 127.0.0.1) and a client certificate, as files."""

    def __init__(self, directory: Path, ca: trustme.CA | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = ca or trustme.CA()
        self.ca_file = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.cert_file, self.key_file = directory / "server.pem", directory / "server.key"
        server.cert_chain_pems[0].write_to_path(str(self.cert_file))
        server.private_key_pem.write_to_path(str(self.key_file))
        client = self.ca.issue_cert("relay-a.example")
        self.client_cert, self.client_key = directory / "client.pem", directory / "client.key"
        client.cert_chain_pems[0].write_to_path(str(self.client_cert))
        client.private_key_pem.write_to_path(str(self.client_key))


def _collector(tmp_path: Path, pki: Pki, *, require_client_cert: bool = False) -> Any:
    tls: dict[str, Any] = {
        "addresses": ["127.0.0.1:0"],
        "cert_file": str(pki.cert_file),
        "key_file": str(pki.key_file),
    }
    if require_client_cert:
        tls |= {"client_ca_file": str(pki.ca_file), "require_client_cert": True}
    return running_server(
        tmp_path / "b",
        {"listen.tls": tls, "origin.trust_origip": True, "origin.trusted_sources": ["127.0.0.1"]},
    )


def _relay(tmp_path: Path, port: int, tls: dict[str, Any]) -> Any:
    forward = {"name": "tls-up", "host": "127.0.0.1", "port": port, "protocol": "tls",
               "tls": tls, "reconnect_initial_s": 0.1, "reconnect_max_s": 0.3}  # fmt: skip
    return running_server(tmp_path / "a", {"forward": [forward]})


def _tls_port(running: Any) -> int:
    [port] = [port for kind, _, port in running.server.bound if kind == "tls"]
    return int(port)


async def _logged(
    text: str, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> str:
    """Wait for `text` in this process's logs or (workers) in the children's stderr."""
    seen = ""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        seen += capfd.readouterr().err
        if text in caplog.text or text in seen:
            return caplog.text + seen
        await asyncio.sleep(0.1)
    raise AssertionError(f"no log line with {text!r}:\n{caplog.text}{seen}")


async def test_right_ca_delivers(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    async with (
        _collector(tmp_path, pki) as b,
        _relay(tmp_path, _tls_port(b), {"ca_file": str(pki.ca_file)}) as a,
    ):
        send_tcp(a.port, octet(MESSAGES), source="127.0.0.2")
        lines = await wait_for_lines(b.file("127.0.0.2"), len(MESSAGES))
        assert [line["msg"] for line in lines] == [f" over tls {n}" for n in range(20)]


async def test_wrong_ca_fails_with_a_clear_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    pki, other = Pki(tmp_path / "pki"), Pki(tmp_path / "other")
    async with (
        _collector(tmp_path, pki) as b,
        _relay(tmp_path, _tls_port(b), {"ca_file": str(other.ca_file)}) as a,
    ):
        send_tcp(a.port, octet(MESSAGES), source="127.0.0.2")
        logs = await _logged("certificate verify failed", caplog, capfd)
        assert f"forward tls-up: TLS handshake with 127.0.0.1:{_tls_port(b)} failed" in logs
        await asyncio.sleep(0.3)
        assert not b.file("127.0.0.2").exists()  # nothing went to an unverified peer


async def test_wrong_server_name_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    pki = Pki(tmp_path / "pki")
    async with (
        _collector(tmp_path, pki) as b,
        _relay(
            tmp_path,
            _tls_port(b),
            {"ca_file": str(pki.ca_file), "server_name": "collector.example"},
        ) as a,
    ):
        send_tcp(a.port, octet(MESSAGES), source="127.0.0.2")
        await _logged("Hostname mismatch", caplog, capfd)
        assert not b.file("127.0.0.2").exists()


async def test_client_certificate_required(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    pki = Pki(tmp_path / "pki")
    async with _collector(tmp_path, pki, require_client_cert=True) as b:
        async with _relay(tmp_path, _tls_port(b), {"ca_file": str(pki.ca_file)}) as a:
            send_tcp(a.port, octet(MESSAGES), source="127.0.0.2")
            # both sides say why (TLS 1.3: the relay's handshake completes first, then the
            # collector's alert arrives)
            logs = await _logged("alert certificate required", caplog, capfd)
            assert "TLS handshake with 127.0.0.1 failed: peer did not return a certificate" in logs
            assert not b.file("127.0.0.2").exists()
        # the same spool, now with a client certificate: everything arrives
        tls = {"ca_file": str(pki.ca_file), "cert_file": str(pki.client_cert),
               "key_file": str(pki.client_key)}  # fmt: skip
        async with _relay(tmp_path, _tls_port(b), tls):
            lines = await wait_for_lines(b.file("127.0.0.2"), len(MESSAGES))
            assert len(lines) == len(MESSAGES)


async def test_plain_syslog_on_the_tls_port_is_refused_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    pki = Pki(tmp_path / "pki")
    async with _collector(tmp_path, pki) as b:
        send_tcp(_tls_port(b), octet(MESSAGES), source="127.0.0.2")
        await _logged("TLS handshake with 127.0.0.2 failed", caplog, capfd)
        await asyncio.sleep(0.2)
        assert not b.file("127.0.0.2").exists()


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


async def _gather(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str], seconds: float
) -> str:
    """Everything logged (here and by worker processes) during the next `seconds`."""
    seen = ""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        seen += capfd.readouterr().err
        await asyncio.sleep(0.1)
    return caplog.text + seen + capfd.readouterr().err


async def test_a_refused_relay_never_says_connected_and_says_why_once(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    workers: int,
) -> None:
    caplog.set_level(logging.INFO)
    pki = Pki(tmp_path / "pki")
    async with _collector(tmp_path, pki, require_client_cert=True) as b:
        async with _relay(tmp_path, _tls_port(b), {"ca_file": str(pki.ca_file)}) as a:
            send_tcp(a.port, octet(MESSAGES), source="127.0.0.2")
            logs = await _gather(caplog, capfd, 3.0)  # retries every 0.1-0.3 s
            metrics = await asyncio.to_thread(_metrics, a.server.health.port)
        connects = re.search(r'forward_connects_total\{target="tls-up"\} (\S+)', metrics)
        assert connects is not None and float(connects[1]) >= 4, metrics  # refused repeatedly
        assert "forward tls-up: connected" not in logs, logs  # nothing was delivered
        # the reason, once per target (each worker has its own)
        assert logs.count("alert certificate required") == workers, logs
        caplog.clear()
        tls = {"ca_file": str(pki.ca_file), "cert_file": str(pki.client_cert),
               "key_file": str(pki.client_key)}  # fmt: skip
        async with _relay(tmp_path, _tls_port(b), tls):
            lines = await wait_for_lines(b.file("127.0.0.2"), len(MESSAGES))
            assert len(lines) == len(MESSAGES)
            logs = await _gather(caplog, capfd, 1.5)  # confirm_after_s: 1
        assert logs.count("forward tls-up: connected to 127.0.0.1") == workers, logs
        assert logs.count("(tls), delivering; 0 messages spooled") == 1, logs  # 20 confirmed
        assert logs.count("(tls), idle; 0 messages spooled") == workers - 1, logs
