"""A RELP server for the sender's tests, on a real loopback socket: it answers `open`, takes
`syslog` and answers each as its `policy` says (200, an error, nothing yet, `serverclose`, or a
dropped connection), so every path of relay.forward.relp_sender can be driven."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import cast

from relay.ingest import relp

OFFERS = b"200 OK\nrelp_version=0\nrelp_software=relp-peer,1,test\ncommands=syslog"


class Session(asyncio.Protocol):
    def __init__(self, peer: RelpPeer) -> None:
        self.peer = peer
        self.decoder = relp.RelpDecoder(1 << 20)
        self.transport: asyncio.Transport | None = None
        self.held: list[int] = []  # syslog transactions not answered yet
        self.number = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.peer.sessions.append(self)
        self.number = len(self.peer.sessions)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def answer(self, txnr: int, text: bytes = b"200 OK") -> None:
        if self.transport is not None:
            self.transport.write(relp.encode(txnr, b"rsp", text))

    def release(self) -> None:
        """Answer every held transaction 200."""
        held, self.held = self.held, []
        for txnr in held:
            self.answer(txnr)

    def data_received(self, data: bytes) -> None:
        for frame in self.decoder.feed(data):
            command = frame.command.decode()
            self.peer.commands.append(command)
            if command == "open":
                self.answer(frame.txnr, self.peer.open_answer)
            elif command == "close" and self.transport is not None:
                # as librelp: an rsp without data, then serverclose, then the socket closes
                self.transport.write(relp.encode(frame.txnr, b"rsp") + relp.serverclose())
                self.transport.close()
            elif command == "syslog":
                self.peer.messages.append(bytes(frame.data))
                self.peer.txnrs.append(frame.txnr)
                self._syslog(frame.txnr)

    def _syslog(self, txnr: int) -> None:
        action = self.peer.policy(self, len(self.peer.messages))
        if action == "ok":
            self.answer(txnr)
        elif action == "hold":
            self.held.append(txnr)
        elif action == "error":
            self.answer(txnr, b"500 not today")
        elif action == "serverclose" and self.transport is not None:
            self.transport.write(relp.serverclose())
            self.transport.close()
        elif action == "drop" and self.transport is not None:
            self.transport.abort()
        elif action == "junk" and self.transport is not None:
            self.answer(txnr)  # this one is answered, then garbage follows
            self.transport.write(b"1 rsp x\n")
        elif action == "unknown-txnr":
            self.answer(txnr + 1000)
        elif action == "bad-answer":
            self.answer(txnr, b"OK")  # no status code


class RelpPeer:
    """`policy(session, messages received so far) -> "ok" | "hold" | "error" | "serverclose"
    | "drop" | "junk" | "unknown-txnr" | "bad-answer"`; every syslog message received (all sessions) in
    `messages`."""

    def __init__(self, *, context: ssl.SSLContext | None = None) -> None:
        self.context = context
        self.messages: list[bytes] = []
        self.commands: list[str] = []
        self.txnrs: list[int] = []  # of the syslog commands
        self.sessions: list[Session] = []
        self.open_answer = OFFERS
        self.policy: Callable[[Session, int], str] = lambda session, n: "ok"
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> RelpPeer:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: Session(self), "127.0.0.1", self.port, ssl=self.context
        )
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for session in self.sessions:
                if session.transport is not None:
                    session.transport.abort()
            await self.server.wait_closed()
