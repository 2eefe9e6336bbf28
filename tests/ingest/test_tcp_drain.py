"""drain_and_close half-closes: a sender that checks for a close before each send (as rsyslog's
omfwd does) stops there, and everything it sent before is still read: nothing is lost even
while it sends as fast as it can."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from relay.ingest.tcp import TcpListener


def send_until_closed(port: int, sent: list[int], started: threading.Event) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        n = 0
        while True:
            try:
                if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                    return  # closed by the server: omfwd would reconnect here
            except BlockingIOError:
                pass
            except ConnectionError:
                return
            try:
                sock.sendall(b"<13>Jan  5 10:11:12 h app: %d %s\n" % (n, b"x" * 100))
            except (ConnectionError, BrokenPipeError):
                return
            sent.append(n)
            n += 1
            if n == 2000:
                started.set()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("round_", range(5))
async def test_a_checking_sender_loses_nothing_at_drain(round_: int) -> None:
    received: list[bytes] = []
    listener = TcpListener(lambda frames, peer, at: received.extend(frames))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    listener.server = await loop.create_server(listener.protocol, sock=sock)
    sent: list[int] = []
    started = threading.Event()
    sender = threading.Thread(
        target=send_until_closed, args=(sock.getsockname()[1], sent, started), daemon=True
    )
    sender.start()
    assert await asyncio.to_thread(started.wait, 10)
    async with asyncio.timeout(10):  # established and served (not still in the backlog)
        while not listener.connections:
            await asyncio.sleep(0.01)
    await listener.drain_and_close(5.0, sock)
    await asyncio.to_thread(sender.join, 10)
    sock.close()
    numbers = [int(frame.split(b": ")[1].split(b" ")[0]) for frame in received]
    assert numbers == sent
    assert len(sent) >= 2000
