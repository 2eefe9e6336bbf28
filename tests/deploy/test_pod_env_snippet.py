"""The pod snippet for the host-ip mode (`rsyslog-conf --node-ip-env HOST_IP`): rsyslogd accepts
it, and a real rsyslogd with HOST_IP in its environment sends to that address, UDP and TCP."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from relay.node.podconf import pod_snippet_from_env
from tests.deploy.test_rsyslog_conf import (
    FORWARDED,
    RECEIVE_TIMEOUT_S,
    OctetCountedReader,
    PodRsyslogd,
    stop_process,
    validate,
)


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_rsyslogd_accepts_the_env_snippet(
    rsyslogd: str, tcp: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOST_IP", "192.0.2.7")
    result = validate(rsyslogd, pod_snippet_from_env("HOST_IP", tcp=tcp), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "error" not in result.stderr.lower(), result.stderr


def test_env_snippet_check_has_teeth(
    rsyslogd: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOST_IP", "192.0.2.7")
    text = pod_snippet_from_env("HOST_IP").replace("`echo $HOST_IP`", "`cat /etc/hostname`")
    assert validate(rsyslogd, text, tmp_path).returncode != 0


@pytest.mark.timeout(60)
def test_env_snippet_sends_to_the_address_in_the_environment(
    rsyslogd: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOST_IP", "127.0.0.1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
        udp.bind(("127.0.0.1", 0))
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        for sock in (udp, tcp):
            sock.settimeout(RECEIVE_TIMEOUT_S)
        for receiver, is_tcp in ((udp, False), (tcp, True)):
            port = receiver.getsockname()[1]
            directory = tmp_path / ("tcp" if is_tcp else "udp")
            directory.mkdir()
            pod = PodRsyslogd(rsyslogd, pod_snippet_from_env("HOST_IP", tcp=is_tcp, port=port),
                              directory)  # fmt: skip
            try:
                pod.log(b"<14>app: hello from the env snippet")
                if is_tcp:
                    conn, _ = tcp.accept()
                    with conn:
                        conn.settimeout(RECEIVE_TIMEOUT_S)
                        frame = OctetCountedReader(conn).frame().partition(b" ")[2]
                else:
                    frame = udp.recv(65535)
            finally:
                stop_process(pod.proc)
            match = FORWARDED.fullmatch(frame)
            assert match and match[1] == b"hello from the env snippet", frame
