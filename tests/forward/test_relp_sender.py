"""relay.forward.relp_sender against a RELP server on a real socket (tests/forward/relp_peer.py):
the window, commits only of answered records, resends after a refusal, a `serverclose`, a
dropped connection or a missing answer, a refused `open`, the clean `close`, and TLS."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import pytest
import trustme

from relay.config import Forward, ForwardTls
from relay.forward.relp_sender import RelpTarget, split_octet_counted
from relay.forward.targets import open_target
from relay.forward.upstream_format import frame_octet_counted
from tests.forward.relp_peer import RelpPeer, Session

pytestmark = pytest.mark.timeout(60)


def _messages(count: int, first: int = 0) -> list[bytes]:
    return [b"<13>Jan  5 10:11:12 pod app[7]: relp %06d" % n for n in range(first, first + count)]


def _offer(target: RelpTarget, messages: list[bytes]) -> None:
    def parse(*_: Any) -> Any:
        raise AssertionError("raw needs no parse")

    offered: list[Any] = [(m, 0, b"", b"", 13) for m in messages]
    target.take(offered, "127.0.0.1", time.time(), True, parse)


async def _until(predicate: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@asynccontextmanager
async def _target(tmp_path: Path, port: int, **keys: Any) -> AsyncIterator[RelpTarget]:
    settings: dict[str, Any] = {
        "name": "up", "host": "127.0.0.1", "port": port, "protocol": "relp", "format": "raw",
        "reconnect_initial_s": 0.05, "reconnect_max_s": 0.2, "connect_timeout_s": 2.0,
    }  # fmt: skip
    config = Forward(**(settings | keys))
    target = open_target(config, str(tmp_path / "state"), 0, 1)
    assert isinstance(target, RelpTarget)
    task = asyncio.create_task(target.run())
    try:
        yield target
    finally:
        await target.settle(1.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        target.close()


@asynccontextmanager
async def _peer(context: ssl.SSLContext | None = None) -> AsyncIterator[RelpPeer]:
    peer = await RelpPeer(context=context).start()
    try:
        yield peer
    finally:
        await peer.stop()


def test_split_octet_counted_gives_back_the_messages() -> None:
    messages = [b"a", b"", b"with space and\nnewline", b"9" * 300]
    assert split_octet_counted(frame_octet_counted(messages)) == messages
    assert split_octet_counted(b"5 abc") == [b"5 abc"]  # malformed: the rest as one


async def test_every_message_is_answered_and_committed(tmp_path: Path) -> None:
    async with _peer() as peer, _target(tmp_path, peer.port) as target:
        sent = _messages(500)
        _offer(target, sent)
        await _until(lambda: target.spool.pending_records == 0, "the spool to be committed")
        assert peer.messages == sent
        assert peer.commands[0] == "open"
        assert target.acked == 500 and target.resent == 0
        stats = target.stats(time.time())
        assert stats["relp_acked"] == 500 and stats["sent"] == 500


@pytest.mark.parametrize("window", [1, 5, 64])
async def test_the_window_bounds_unanswered_messages(tmp_path: Path, window: int) -> None:
    total = window * 5 + 3
    async with _peer() as peer, _target(tmp_path, peer.port, relp_window=window) as target:
        peer.policy = lambda session, n: "hold"
        _offer(target, _messages(total))
        await _until(lambda: len(peer.messages) == window, "a full window")
        await asyncio.sleep(0.2)
        assert len(peer.messages) == window  # nothing more until answered
        assert target.spool.pending_records == total  # nothing answered: nothing committed
        while len(peer.messages) < total:
            before = len(peer.messages)
            peer.sessions[-1].release()
            await _until(lambda b=before: len(peer.messages) >= min(b + window, total),
                         "the next window")  # fmt: skip
            await asyncio.sleep(0.02)
            assert len(peer.messages) == min(before + window, total)
        peer.sessions[-1].release()
        await _until(lambda: target.spool.pending_records == 0, "every record committed")
        assert peer.messages == _messages(total)
        assert len(peer.sessions) == 1


async def test_a_record_is_committed_only_when_every_message_of_it_is_answered(
    tmp_path: Path,
) -> None:
    async with _peer() as peer, _target(tmp_path, peer.port) as target:
        # answer all but the 40th: its record (of 64) stays, later records wait behind it
        peer.policy = lambda session, n: "hold" if n == 40 else "ok"
        _offer(target, _messages(200))
        await _until(lambda: target.acked == 199, "199 answers")
        await asyncio.sleep(0.1)
        assert target.spool.pending_records == 200
        peer.sessions[-1].release()
        await _until(lambda: target.spool.pending_records == 0, "the commit")


async def test_an_error_answer_drops_the_session_and_the_message_is_sent_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with _peer() as peer, _target(tmp_path, peer.port) as target:
        peer.policy = lambda session, n: "error" if n == 10 else "ok"
        with caplog.at_level(logging.WARNING):
            _offer(target, _messages(100))
            await _until(lambda: target.spool.pending_records == 0, "delivery after the error")
        assert len(peer.sessions) == 2
        assert set(_messages(100)) <= set(peer.messages)
        assert target.rsp_errors == 1
        assert "the upstream refused a message: 500 not today" in caplog.text
        assert target.resent >= 1


@pytest.mark.parametrize("action", ["serverclose", "drop"])
async def test_a_session_ended_by_the_upstream_resends_what_was_not_answered(
    tmp_path: Path, action: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with _peer() as peer, _target(tmp_path, peer.port, relp_window=20) as target:
        # the first session holds its answers, then ends at the 20th message
        def policy(session: Session, n: int) -> str:
            if session.number > 1:
                return "ok"
            return action if n == 20 else "hold"

        peer.policy = policy
        with caplog.at_level(logging.WARNING):
            _offer(target, _messages(100))
            await _until(lambda: target.spool.pending_records == 0, "delivery after the end")
        assert len(peer.sessions) == 2
        first, rest = peer.messages[:20], peer.messages[20:]
        assert first == _messages(20)
        assert rest == _messages(100)  # every unanswered one again, in order
        assert target.resent == 20
        if action == "serverclose":
            assert "the upstream closed the session (serverclose)" in caplog.text


@pytest.mark.parametrize("action", ["junk", "unknown-txnr", "bad-answer"])
async def test_an_answer_breaking_the_protocol_drops_the_session(
    tmp_path: Path, action: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with _peer() as peer, _target(tmp_path, peer.port) as target:
        peer.policy = lambda session, n: action if n == 30 and session.number == 1 else "ok"
        with caplog.at_level(logging.WARNING):
            _offer(target, _messages(100))
            await _until(lambda: target.spool.pending_records == 0, "delivery after the error")
        assert target.protocol_errors == 1
        assert len(peer.sessions) == 2
        assert set(peer.messages) == set(_messages(100))
        expected = {
            "junk": "RELP protocol error from the upstream",
            "unknown-txnr": "which is not outstanding",
            "bad-answer": "answer to transaction 31 is unreadable (expecting a 3-digit status",
        }
        assert expected[action] in caplog.text


async def test_no_answer_within_the_timeout_drops_the_session(tmp_path: Path) -> None:
    async with _peer() as peer, _target(tmp_path, peer.port, relp_ack_timeout_s=0.3) as target:
        peer.policy = lambda session, n: "hold" if session.number == 1 else "ok"
        _offer(target, _messages(10))
        await _until(lambda: target.spool.pending_records == 0, "delivery on a new session")
        assert len(peer.sessions) == 2
        assert peer.messages == _messages(10) * 2


async def test_a_refused_open_sends_nothing_and_is_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with _peer() as peer:
        peer.open_answer = b"500 go away"
        with caplog.at_level(logging.WARNING):
            async with _target(tmp_path, peer.port) as target:
                _offer(target, _messages(5))
                await _until(lambda: len(peer.sessions) >= 3, "retries")
                assert peer.messages == []
                assert target.spool.pending_records == 5
                peer.open_answer = b"200 OK\nrelp_version=0\ncommands=syslog"
                await _until(lambda: target.spool.pending_records == 0, "delivery")
        assert "refused the RELP session: 500 go away" in caplog.text
        # the same failure again is not logged at every retry
        assert caplog.text.count("refused the RELP session") < len(peer.sessions) - 1


async def test_transaction_numbers_wrap_from_999999999_to_1(tmp_path: Path) -> None:
    async with _peer() as peer, _target(tmp_path, peer.port) as target:
        await _until(lambda: target._opened, "the open answered")
        target._txnr = 999_999_997  # as after a billion messages on one session
        _offer(target, _messages(5))
        await _until(lambda: target.spool.pending_records == 0, "delivery across the wrap")
        assert peer.txnrs == [999_999_998, 999_999_999, 1, 2, 3]
        assert target.acked == 5


async def test_the_spool_of_a_worker_that_is_gone_is_sent_first_and_removed(
    tmp_path: Path,
) -> None:
    config = Forward(name="up", host="127.0.0.1", port=9, protocol="relp", format="raw")
    gone = open_target(config, str(tmp_path / "state"), 1, 2)  # worker 1 of 2
    _offer(cast(RelpTarget, gone), _messages(70))
    gone.close()
    async with _peer() as peer, _target(tmp_path, peer.port) as target:  # now 1 worker
        _offer(target, _messages(10, first=70))
        await _until(lambda: len(peer.messages) == 80, "both spools sent")
        await _until(lambda: not (tmp_path / "state/spool/up/w1").exists(), "w1 removed")
        assert peer.messages == _messages(80)


async def test_stop_ends_the_session_with_close(tmp_path: Path) -> None:
    async with _peer() as peer:
        async with _target(tmp_path, peer.port) as target:
            _offer(target, _messages(3))
            await _until(lambda: target.spool.pending_records == 0, "delivery")
        assert peer.commands == ["open", "syslog", "syslog", "syslog", "close"]


async def test_a_restart_sends_what_was_never_answered(tmp_path: Path) -> None:
    async with _peer() as peer:
        peer.policy = lambda session, n: "hold" if n > 70 else "ok"
        async with _target(tmp_path, peer.port) as target:
            _offer(target, _messages(100))
            await _until(lambda: len(peer.messages) == 100, "everything sent")
            await _until(lambda: target.spool.pending_records == 100 - 64, "the first record")
        peer.policy = lambda session, n: "ok"
        async with _target(tmp_path, peer.port) as target:  # the same spool
            await _until(lambda: target.spool.pending_records == 0, "the rest")
        assert peer.messages[100:] == _messages(36, first=64)


async def test_over_tls_with_the_certificate_checked(tmp_path: Path) -> None:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    async with _peer(server) as peer:
        tls = ForwardTls(ca_file=str(ca_file))
        async with _target(tmp_path, peer.port, protocol="relp-tls", tls=tls) as target:
            _offer(target, _messages(50))
            await _until(lambda: target.spool.pending_records == 0, "delivery over TLS")
        assert peer.messages == _messages(50)
        assert peer.commands[-1] == "close"


async def test_over_tls_a_wrong_ca_delivers_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(server)
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    async with _peer(server) as peer:
        tls = ForwardTls(ca_file=str(other))
        with caplog.at_level(logging.WARNING):
            async with _target(tmp_path, peer.port, protocol="relp-tls", tls=tls) as target:
                _offer(target, _messages(5))
                await _until(lambda: target.connect_failures >= 2, "failed handshakes")
                assert target.spool.pending_records == 5
        assert peer.messages == []
        assert "certificate verify failed" in caplog.text
