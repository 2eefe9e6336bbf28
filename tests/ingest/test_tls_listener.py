"""The TLS listener against real senders that write and close without reading anything.

Each sender first gets one message through (connection and handshake done), then the server
is frozen while the sender sends the rest and closes, so the close finds the stream still in
flight; the counts of numbered messages at the server must match exactly.
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import pytest

from tests.ingest.tls_clients import (
    Pki,
    Sender,
    TlsServer,
    lines_in,
    metric,
    python_client_never_reading,
    rsyslog_sender,
    send_plain_tcp,
    syslog_ng_sender,
    wait_for,
)

COUNT = 5000  # ~330 KB: fits in the kernel's socket buffers while the server is frozen


@pytest.mark.timeout(60)
def test_python_client_that_never_reads_loses_nothing(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    with TlsServer(tmp_path, pki) as server:
        context = ssl.create_default_context(cafile=str(pki.ca_file))
        raw = socket.create_connection(("127.0.0.1", server.port))
        tls = context.wrap_socket(raw, server_hostname="127.0.0.1")
        time.sleep(0.2)  # whatever the server sends after the handshake is there now
        with server.stopped():
            tls.sendall(
                b"".join(b"<13>Jan  5 10:11:12 h app: seq %d\n" % n for n in range(COUNT * 4))
            )
            tls.close()  # no close_notify, no read: as a killed or careless sender
            time.sleep(0.3)
        assert sorted(server.numbers(COUNT * 4)) == list(range(COUNT * 4))


@pytest.mark.timeout(60)
def test_python_client_without_handshake_pause_loses_nothing(tmp_path: Path) -> None:
    """The common case, nothing frozen: connect, send, close at once."""
    pki = Pki(tmp_path / "pki")
    with TlsServer(tmp_path, pki) as server:
        for _ in range(5):
            python_client_never_reading(server.port, pki.ca_file, COUNT)
        numbers = server.numbers(COUNT * 5)
        assert sorted(numbers) == sorted(list(range(COUNT)) * 5)


@pytest.mark.timeout(60)
def test_close_notify_is_answered_and_the_connection_closed(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    with TlsServer(tmp_path, pki) as server:
        context = ssl.create_default_context(cafile=str(pki.ca_file))
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        tls = context.wrap_socket(raw, server_hostname="127.0.0.1")
        tls.sendall(b"<13>Jan  5 10:11:12 h app: seq 0\n")
        plain = tls.unwrap()  # sends close_notify, waits for the server's (5 s at most)
        assert plain.recv(1) == b""  # and then the server closed the connection
        plain.close()
        assert server.numbers(1) == [0]


def _through(server: TlsServer, sender: Sender) -> list[int]:
    """One message through the sender, the server frozen, COUNT more, the sender stopped."""
    with sender:
        send_plain_tcp(sender.port, 0, 1)
        assert server.numbers(1, timeout_s=15) == [0], sender.output.read_text()
        with server.stopped():
            send_plain_tcp(sender.port, 1, COUNT + 1)
            if sender.copy.exists() or "rsyslog" in sender.args[0]:
                wait_for(lambda: lines_in(sender.copy) >= COUNT + 1, 20)
            time.sleep(0.5)  # it has written everything to its TLS socket
            assert sender.proc is not None
            sender.stop(timeout_s=5)  # it closes its connection while we do not read
        return server.numbers(COUNT + 1)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("driver", ["gtls", "ossl"])
def test_rsyslog_tls_sender_loses_nothing_at_close(tmp_path: Path, driver: str) -> None:
    pki = Pki(tmp_path / "pki")
    with TlsServer(tmp_path, pki) as server:
        sender = rsyslog_sender(tmp_path / "rsyslog", driver, server.port, pki.ca_file)
        assert sorted(_through(server, sender)) == list(range(COUNT + 1))


@pytest.mark.timeout(90)
def test_syslog_ng_tls_sender_loses_nothing_at_close(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    with TlsServer(tmp_path, pki) as server:
        sender = syslog_ng_sender(tmp_path / "syslog-ng", server.port, pki.ca_file)
        assert sorted(_through(server, sender)) == list(range(COUNT + 1))


@pytest.mark.timeout(60)
def test_syslog_ng_connected_but_silent_is_not_cut_by_the_handshake_timeout(
    tmp_path: Path,
) -> None:
    """syslog-ng 3.38 connects at start and handshakes only with its first message."""
    pki = Pki(tmp_path / "pki")
    tls = "handshake_timeout_s = 0.3"
    with TlsServer(tmp_path, pki, listen="idle_timeout_s = 30.0", tls=tls) as server:
        metrics = server.metrics
        sender = syslog_ng_sender(tmp_path / "syslog-ng", server.port, pki.ca_file)
        with sender:
            wait_for(lambda: metric(metrics, "tcp_connections") >= 1)
            time.sleep(1.5)  # five handshake timeouts, silent
            send_plain_tcp(sender.port, 0, 1)
            # cut off, syslog-ng would wait its time_reopen (60 s) before sending again
            assert server.numbers(1, timeout_s=5) == [0], sender.output.read_text()
        assert metric(metrics, "tls_handshakes_failed_total") == 0
