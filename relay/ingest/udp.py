"""UDP listener: one datagram is one message, cut at the maximum message size.

The socket is drained in batches when it becomes readable (as rsyslog's imudp does):
up to BATCH_DATAGRAMS datagrams per wake-up, grouped by sender, each group handed on with one
reception time. On Linux a batch is read with recvmmsg (ingest.recvmmsg: up to 64 datagrams per
system call, senders as packed addresses mapped to their FROMHOST-IP by a dict; a run of one
sender's datagrams is taken as one list); elsewhere, or with `use_recvmmsg=False`, one
`recvfrom` per datagram.

With `batch_wait_s`, steady traffic is read on a timer instead: a wake-up that found only a
few datagrams switches to reading every `batch_wait_s` (the event loop's wake-up, the system
calls and the per-sender work then serve a batch instead of one or two datagrams), and a timed
read that finds the socket empty switches back to waking per datagram (an idle socket costs
no timer). The kernel's receive buffer holds what arrives in between: the wait is shortened so
that, at the rate the last read saw, it fills at most a quarter of the buffer (SO_RCVBUF as the
kernel granted it; a small datagram takes 1,280 bytes of it).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable

from relay.ingest.addresses import peer_ip
from relay.ingest.limits import SourceFilter, TokenBuckets
from relay.ingest.recvmmsg import Batch, address_of

OnFrames = Callable[[list[bytes], str, float], None]

BATCH_DATAGRAMS = 512
# a wake-up that read fewer datagrams than this is not worth its cost: wait for more
FEW_DATAGRAMS = 32
RUN_DATAGRAMS = 4  # one sender's datagrams in a row, taken together (see _read_batches)
DATAGRAM_TRUESIZE = 1280  # what a small datagram costs of SO_RCVBUF (measured, Linux 6)
_RECV_BYTES = 65535  # the largest datagram; longer than any message, cut below


def run_end(senders: tuple[bytes, ...], first: int) -> int:
    """Where the run of `senders[first]` that starts at `first` ends (the index after it)."""
    key = senders[first]
    end = first + senders[first:].count(key)  # C-level counts: a long run costs no loop
    if senders[first:end].count(key) == end - first:
        return end
    end = first + 1  # it comes back later: another sender lies in between, before `end`
    while senders[end] == key:
        end += 1
    return end


def socket_drops(sock: socket.socket) -> int:
    """The kernel's count of datagrams dropped on this socket (full receive buffer), from
    /proc/net/udp(6): the line whose inode is the socket's."""
    try:
        inode = str(os.fstat(sock.fileno()).st_ino)
    except OSError:
        return 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as lines:
                for line in lines:
                    fields = line.split()
                    if len(fields) >= 13 and fields[9] == inode:
                        return int(fields[12])
        except OSError:
            continue
    return 0


class UdpListener:
    """Reads `sock` on the running loop and calls `on_frames(frames, peer_ip, received_at)`."""

    def __init__(
        self,
        sock: socket.socket,
        on_frames: OnFrames,
        *,
        max_message_bytes: int = 8096,
        sources: SourceFilter | None = None,
        rate_limit: TokenBuckets | None = None,
        use_recvmmsg: bool = True,
        batch_wait_s: float = 0.0,
    ) -> None:
        self._sock = sock
        self._batch_wait_s = batch_wait_s
        self._timer: asyncio.TimerHandle | None = None  # reading on a timer (see the module doc)
        self._read_at = 0.0  # the loop's time of the last timed read
        # datagrams a timed wait may let in: a quarter of the receive buffer
        rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self._budget = max(1, min(BATCH_DATAGRAMS, rcvbuf // (4 * DATAGRAM_TRUESIZE)))
        self._on_frames = on_frames
        self._max = max_message_bytes
        self._sources = sources
        self._rate_limit = rate_limit
        self._peers: dict[object, str] = {}  # host -> FROMHOST-IP, or "" if not allowed
        self._batch: Batch | None = None
        if use_recvmmsg and Batch.available():
            self._batch = Batch(sock.fileno(), sock.family, max_message_bytes)
        self.refused = 0
        self.rate_limited = 0
        self.datagrams = 0
        self.messages = 0
        self.bytes = 0
        self.truncated = 0
        self._reading = False

    def stats(self) -> dict[str, int]:
        return {
            "received_udp": self.messages,
            "udp_bytes": self.bytes,
            "udp_truncated": self.truncated,
            "refused": self.refused,
            "rate_limited": self.rate_limited,
            "udp_kernel_drops": socket_drops(self._sock),
        }

    @property
    def timed(self) -> bool:
        """Reading on the batch-wait timer (steady traffic), not at every wake-up."""
        return self._timer is not None

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self._sock.fileno(), self._on_readable)
        self._reading = True

    def close(self) -> None:
        """Stop reading, after handing on everything the socket already holds (a closed socket
        loses its queue: read it empty first)."""
        if self._reading:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            else:
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._reading = False
            while self._read():
                pass
        self._sock.close()

    def _on_readable(self) -> None:
        if self._read() < FEW_DATAGRAMS and self._batch_wait_s > 0:
            loop = asyncio.get_running_loop()
            loop.remove_reader(self._sock.fileno())
            self._read_at = loop.time()
            self._timer = loop.call_later(self._batch_wait_s, self._on_timer)

    def _on_timer(self) -> None:
        loop = asyncio.get_running_loop()
        taken = self._read()
        if not taken:  # quiet: wake up per datagram again
            self._timer = None
            loop.add_reader(self._sock.fileno(), self._on_readable)
            return
        now = loop.time()
        elapsed, self._read_at = now - self._read_at, now
        # at the rate just seen, the budget's worth of datagrams arrives in this long
        wait = min(self._batch_wait_s, elapsed * self._budget / taken)
        if taken >= BATCH_DATAGRAMS:  # the read stopped at its cap: more is waiting
            wait = 0.0
        self._timer = loop.call_later(wait, self._on_timer)

    def _read(self) -> int:
        """One batch; returns how many datagrams it took."""
        before = self.datagrams
        if self._batch is not None:
            self._hand_on(self._read_batches(self._batch))
        else:
            self._hand_on(self._read_each())
        return self.datagrams - before

    def _read_batches(self, batch: Batch) -> dict[str, list[bytes]]:
        peers, limit, data, slot = self._peers, self._max, batch.data, batch.slot
        batches: dict[str, list[bytes]] = {}
        count = size = refused = truncated = 0
        try:
            while count < BATCH_DATAGRAMS:
                received = batch.receive()
                count += received
                lengths, senders = batch.lengths(received), batch.senders(received)
                # A busy sender's datagrams come in runs (a sendmmsg, a burst): a run of one
                # sender, none empty or cut, is taken as one list (a comprehension instead of
                # the loop below: 150 instead of 340 ns per datagram, measured). The first
                # datagram that is not in such a run, and all after it, go one by one.
                first = 0
                while first < received:
                    key, end = senders[first], run_end(senders, first)
                    run = end - first
                    if run < RUN_DATAGRAMS:
                        break  # interleaved senders
                    run_lengths = lengths[first:end]
                    if not min(run_lengths) or max(run_lengths) > limit:
                        break  # an empty or a cut datagram among them
                    peer = peers.get(key)
                    if peer is None:
                        peer = self._peer_of(key)
                    if peer:
                        size += sum(run_lengths)
                        frames = batches.get(peer)
                        if frames is None:
                            batches[peer] = batch.datagrams(first, run_lengths)
                        else:
                            frames += batch.datagrams(first, run_lengths)
                    else:  # not an allowed source: no further work
                        refused += run
                    first = end
                for index, length, key in zip(
                    range(first, received), lengths[first:], senders[first:], strict=True
                ):
                    if not length:  # rsyslog ignores empty datagrams
                        continue
                    peer = peers.get(key)
                    if peer is None:
                        peer = self._peer_of(key)
                    if not peer:  # not an allowed source: no further work
                        refused += 1
                        continue
                    size += length
                    if length > limit:  # its real length: the slot holds what is kept
                        truncated += 1
                        length = limit
                    start = index * slot
                    datagram = data[start : start + length]
                    frames = batches.get(peer)
                    if frames is None:
                        batches[peer] = [datagram]
                    else:
                        frames.append(datagram)
                if received < batch.vlen:
                    break  # the socket is empty: no call just to be told so
        except OSError:  # e.g. ICMP errors reported on the socket: nothing to read now
            pass
        self.datagrams += count
        self.bytes += size
        self.refused += refused
        self.truncated += truncated
        return batches

    def _read_each(self) -> dict[str, list[bytes]]:
        recvfrom, peers, limit = self._sock.recvfrom, self._peers, self._max
        batches: dict[str, list[bytes]] = {}
        count = 0
        try:
            while count < BATCH_DATAGRAMS:
                data, addr = recvfrom(_RECV_BYTES)
                count += 1
                if not data:  # rsyslog ignores empty datagrams
                    continue
                host = addr[0]
                peer = peers.get(host)
                if peer is None:
                    peer = self._peer(host, addr)
                if not peer:  # not an allowed source: no further work
                    self.refused += 1
                    continue
                self.bytes += len(data)
                if len(data) > limit:
                    self.truncated += 1
                    data = data[:limit]
                frames = batches.get(peer)
                if frames is None:
                    batches[peer] = [data]
                else:
                    frames.append(data)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # e.g. ICMP errors reported on the socket: nothing to read now
            pass
        self.datagrams += count
        return batches

    def _hand_on(self, batches: dict[str, list[bytes]]) -> None:
        if batches:
            now = time.time()
            for peer, frames in batches.items():
                if self._rate_limit is not None:
                    frames = self._within_rate(peer, frames, now)
                self.messages += len(frames)
                if frames:
                    self._on_frames(frames, peer, now)

    def _within_rate(self, peer: str, frames: list[bytes], now: float) -> list[bytes]:
        assert self._rate_limit is not None
        left = self._rate_limit.take(peer, len(frames), now)
        if left >= 0:
            return frames
        excess = min(len(frames), int(-left) + (-left % 1 > 0))
        self._rate_limit.give_back(peer, excess)  # what is dropped does not use up the rate
        self.rate_limited += excess
        return frames[: len(frames) - excess]

    def _peer(self, host: object, addr: tuple[object, ...]) -> str:
        return self._remember(host, peer_ip(addr))

    def _peer_of(self, key: bytes) -> str:
        return self._remember(key, address_of(key))

    def _remember(self, key: object, peer: str) -> str:
        if len(self._peers) > 65536:  # many spoofed senders: a bound, not a cache policy
            self._peers.clear()
        if self._sources is not None and not self._sources.allows(peer):
            peer = ""
        self._peers[key] = peer
        return peer
