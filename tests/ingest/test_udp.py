"""The UDP listener on real sockets, with recvmmsg and with the recvfrom fallback: both must
hand on the same frames, from the same senders, with the same counts."""

from __future__ import annotations

import asyncio
import socket

import pytest

from relay.ingest.limits import SourceFilter
from relay.ingest.recvmmsg import Batch, address_of
from relay.ingest.udp import BATCH_DATAGRAMS, UdpListener, run_end

pytestmark = pytest.mark.timeout(60)

PATHS = [
    pytest.param(True, id="recvmmsg"),
    pytest.param(False, id="recvfrom"),
]


def has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def bound(host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if host == "::":
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


async def receive(
    use_recvmmsg: bool,
    listen: str,
    sends: list[tuple[str, bytes]],
    **options: object,
) -> tuple[list[tuple[str, bytes]], UdpListener]:
    """Queue every datagram first (the kernel keeps them), then let the listener read: one
    wake-up sees them all, as under load."""
    if use_recvmmsg and not Batch.available():
        pytest.skip("recvmmsg is Linux-only")
    sock = bound(listen)
    port = sock.getsockname()[1]
    senders: dict[str, socket.socket] = {}
    for host, data in sends:
        if host not in senders:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            senders[host] = socket.socket(family, socket.SOCK_DGRAM)
            senders[host].bind((host, 0))
        target = (
            "::1" if ":" in host else ("127.0.0.1" if ":" not in listen else "::ffff:127.0.0.1")
        )
        if ":" in listen and ":" not in host:
            target = "127.0.0.1"
        senders[host].sendto(data, (target, port))
    got: list[tuple[str, bytes]] = []
    listener = UdpListener(
        sock,
        lambda frames, peer, _at: got.extend((peer, f) for f in frames),
        use_recvmmsg=use_recvmmsg,
        **options,  # type: ignore[arg-type]
    )
    listener.start()
    expected = sum(1 for _ in sends)
    for _ in range(200):
        await asyncio.sleep(0.01)
        if listener.datagrams >= expected:
            break
    listener.close()
    for s in senders.values():
        s.close()
    return got, listener


@pytest.mark.parametrize("use_recvmmsg", PATHS)
async def test_order_per_sender_and_grouping(use_recvmmsg: bool) -> None:
    sends = [(f"127.0.0.{2 + i % 3}", b"<13>m %d" % i) for i in range(300)]
    got, listener = await receive(use_recvmmsg, "127.0.0.1", sends)
    for host in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
        assert [f for p, f in got if p == host] == [f for h, f in sends if h == host]
    assert listener.messages == 300 and listener.datagrams == 300
    assert listener.bytes == sum(len(d) for _, d in sends)


@pytest.mark.parametrize("use_recvmmsg", PATHS)
@pytest.mark.parametrize(
    ("size", "kept", "truncated"),
    [(99, 99, 0), (100, 100, 0), (101, 100, 1), (5000, 100, 1)],
    ids=["below", "at-max", "one-over", "far-over"],
)
async def test_cut_at_max_message_bytes(
    use_recvmmsg: bool, size: int, kept: int, truncated: int
) -> None:
    data = bytes(range(256)) * (size // 256 + 1)
    got, listener = await receive(
        use_recvmmsg, "127.0.0.1", [("127.0.0.2", data[:size])], max_message_bytes=100
    )
    assert got == [("127.0.0.2", data[:kept])]
    assert listener.truncated == truncated
    assert listener.bytes == size


@pytest.mark.parametrize("use_recvmmsg", PATHS)
async def test_empty_datagrams_are_ignored(use_recvmmsg: bool) -> None:
    sends = [("127.0.0.2", b""), ("127.0.0.2", b"<13>x"), ("127.0.0.2", b"")]
    got, listener = await receive(use_recvmmsg, "127.0.0.1", sends)
    assert got == [("127.0.0.2", b"<13>x")]
    assert listener.datagrams == 3 and listener.messages == 1


@pytest.mark.parametrize("use_recvmmsg", PATHS)
async def test_refused_sources_cost_no_frame(use_recvmmsg: bool) -> None:
    sends = [("127.0.0.2", b"a"), ("127.0.0.3", b"b"), ("127.0.0.2", b"c")]
    got, listener = await receive(
        use_recvmmsg, "127.0.0.1", sends, sources=SourceFilter(["127.0.0.3/32"])
    )
    assert got == [("127.0.0.3", b"b")]
    assert listener.refused == 2


@pytest.mark.parametrize("use_recvmmsg", PATHS)
async def test_more_than_one_wake_up_holds(use_recvmmsg: bool) -> None:
    count = BATCH_DATAGRAMS * 2 + 7
    sends = [("127.0.0.2", b"%06d" % i) for i in range(count)]
    got, _ = await receive(use_recvmmsg, "127.0.0.1", sends)
    assert [f for _, f in got] == [d for _, d in sends]


@pytest.mark.parametrize(
    ("senders", "first", "end"),
    [
        (b"aaaa", 0, 4), (b"aaab", 0, 3), (b"abbb", 1, 4), (b"aaba", 0, 2), (b"abab", 0, 1),
        (b"abaa", 2, 4), (b"a", 0, 1), (b"aabbbaab", 2, 5), (b"aabbbaab", 5, 7),
    ],
)  # fmt: skip
def test_run_end(senders: bytes, first: int, end: int) -> None:
    assert run_end(tuple(bytes([s]) for s in senders), first) == end


A, B, C, D = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"  # D: not an allowed source
RUN_SHAPES = {
    # one sender's datagrams in a row are taken as one list; anything that is not such a run
    # (and everything after it in that read) goes one by one: the frames must come out alike
    "runs": [(A, 10, 20), (B, 5, 20), (A, 3, 20), (C, 20, 20)],
    "interleaved after a run": [(A, 8, 20)] + [(h, 1, 20) for _ in range(10) for h in (A, B)],
    "empty in a run": [(A, 5, 20), (A, 1, 0), (A, 5, 20), (B, 6, 20)],
    "cut in a run": [(A, 5, 20), (A, 1, 150), (A, 5, 20), (B, 6, 20)],
    "refused run": [(A, 10, 20), (D, 10, 20), (A, 10, 20), (D, 1, 20), (B, 2, 20)],
    "a run over two calls": [(A, 100, 30), (B, 40, 30)],
    "short runs": [(h, 3, 20) for _ in range(8) for h in (A, B, C)],
}


@pytest.mark.parametrize("use_recvmmsg", PATHS)
@pytest.mark.parametrize("shape", list(RUN_SHAPES), ids=list(RUN_SHAPES))
async def test_runs_of_one_sender_and_the_rest(use_recvmmsg: bool, shape: str) -> None:
    datagrams = [(host, size) for host, count, size in RUN_SHAPES[shape] for _ in range(count)]
    sends = [  # numbered, so order shows; size 0: an empty datagram; 150: cut at 100
        (host, (b"%s %04d " % (host.encode(), n) + b"x" * size)[:size])
        for n, (host, size) in enumerate(datagrams)
    ]
    got, listener = await receive(
        use_recvmmsg, "127.0.0.1", sends, max_message_bytes=100,
        sources=SourceFilter(["127.0.0.2/31", "127.0.0.4/32"]),
    )  # fmt: skip
    kept = [(h, d[:100]) for h, d in sends if d and h != D]
    for host in (A, B, C):
        assert [f for p, f in got if p == host] == [d for h, d in kept if h == host]
    assert len(got) == len(kept)
    assert listener.datagrams == len(sends)
    assert listener.refused == sum(1 for h, d in sends if h == D and d)
    assert listener.truncated == sum(1 for h, d in sends if h != D and len(d) > 100)
    assert listener.bytes == sum(len(d) for h, d in sends if h != D)


@pytest.mark.parametrize("use_recvmmsg", PATHS)
@pytest.mark.parametrize(
    ("listen", "sender", "peer"),
    [("::1", "::1", "::1"), ("::", "127.0.0.5", "127.0.0.5"), ("::", "::1", "::1")],
    ids=["ipv6", "dual-stack-mapped-ipv4", "dual-stack-ipv6"],
)
async def test_ipv6_and_mapped_senders(
    use_recvmmsg: bool, listen: str, sender: str, peer: str
) -> None:
    if not has_ipv6():
        pytest.skip("no IPv6 on loopback")
    got, _ = await receive(use_recvmmsg, listen, [(sender, b"<13>six")])
    assert got == [(peer, b"<13>six")]


def test_slots_shrink_for_large_messages() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        assert Batch(sock.fileno(), socket.AF_INET, 8096).vlen == 64
        assert Batch(sock.fileno(), socket.AF_INET, 256 * 1024).vlen == 3


@pytest.mark.parametrize(
    ("key", "address"),
    [
        (socket.inet_pton(socket.AF_INET, "10.1.2.3"), "10.1.2.3"),
        (socket.inet_pton(socket.AF_INET6, "::ffff:10.1.2.3") + bytes(4), "10.1.2.3"),
        (socket.inet_pton(socket.AF_INET6, "2001:db8::7") + bytes(4), "2001:db8::7"),
        (socket.inet_pton(socket.AF_INET6, "fe80::1") + (1).to_bytes(4, "little"), "fe80::1%lo"),
    ],
)
def test_packed_senders_are_written_as_recvfrom_writes_them(key: bytes, address: str) -> None:
    if address.endswith("%lo") and socket.if_indextoname(1) != "lo":
        pytest.skip("interface 1 is not lo here")
    assert address_of(key) == address


@pytest.mark.parametrize("use_recvmmsg", PATHS)
async def test_steady_traffic_is_read_on_the_batch_timer(use_recvmmsg: bool) -> None:
    """A wake-up that finds a datagram or two switches to reading every batch_wait_s: what
    arrives meanwhile is read as one batch; a timed read that finds the socket empty goes
    back to waking per datagram; close() still reads what the socket holds."""
    if use_recvmmsg and not Batch.available():
        pytest.skip("recvmmsg is Linux-only")
    sock = bound("127.0.0.1")
    target = sock.getsockname()
    calls: list[list[bytes]] = []
    listener = UdpListener(
        sock,
        lambda frames, _peer, _at: calls.append(list(frames)),
        use_recvmmsg=use_recvmmsg,
        batch_wait_s=0.2,
    )
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.2", 0))

    async def until(condition: object, what: str) -> None:
        for _ in range(500):
            if callable(condition) and condition():
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"timed out waiting for {what}")

    try:
        listener.start()
        assert not listener.timed
        sender.sendto(b"<13>first", target)
        await until(lambda: listener.datagrams == 1, "the first datagram")
        assert listener.timed  # switched in the same callback that read it
        for i in range(5):
            sender.sendto(b"<13>burst %d" % i, target)
        await until(lambda: listener.datagrams == 6, "the burst")
        assert calls[1] == [b"<13>burst %d" % i for i in range(5)]  # one read took them all
        await until(lambda: not listener.timed, "the switch back")  # a timed read found none
        sender.sendto(b"<13>after quiet", target)
        await until(lambda: listener.datagrams == 7, "a datagram after the quiet")
        assert calls[-1] == [b"<13>after quiet"] and listener.timed
        for i in range(3):
            sender.sendto(b"<13>at close %d" % i, target)
        await asyncio.sleep(0.02)  # (queued in the kernel; the timer is still 0.2 s away)
    finally:
        listener.close()
        sender.close()
    assert calls[-1] == [b"<13>at close %d" % i for i in range(3)]
    assert listener.messages == 10
