"""Protection against noisy or hostile senders: source access lists, rate limits, admission.

All decisions are per source address and cached or O(1), so they can run before any parsing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_TRACKED_SOURCES = 100_000  # bounds the per-source state a spoofing flood can create


class SourceFilter:
    """`allowed_sources`: CIDRs; empty allows everyone."""

    def __init__(self, cidrs: Iterable[str]) -> None:
        self.networks: list[Network] = [ipaddress.ip_network(c, strict=False) for c in cidrs]

    def allows(self, peer: str) -> bool:
        if not self.networks:
            return True
        try:
            address = ipaddress.ip_address(peer.partition("%")[0])
        except ValueError:
            return False
        return any(address in network for network in self.networks)


class TokenBuckets:
    """A token bucket per source: `rate` tokens a second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._buckets: dict[str, list[float]] = {}  # peer -> [tokens, last refill]

    def take(self, peer: str, count: int, now: float) -> float:
        """Take `count` tokens; returns the tokens left (negative: that many were missing)."""
        bucket = self._buckets.get(peer)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED_SOURCES:
                self._buckets.clear()
            bucket = self._buckets[peer] = [self.burst, now]
        else:
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        bucket[0] -= count
        return bucket[0]

    def give_back(self, peer: str, count: float) -> None:
        bucket = self._buckets.get(peer)
        if bucket is not None:
            bucket[0] += count


class Admission:
    """Which sources get their own file and registry entry: at most `max_sources`, admitted at
    `rate` new ones a second (with a burst); the others share the overflow file, so a flood of
    spoofed UDP source addresses cannot create millions of files or registry entries."""

    def __init__(self, known: Iterable[str], max_sources: int, rate: float, burst: int) -> None:
        self._admitted = set(known)
        self._max = max_sources
        self._new = TokenBuckets(rate, burst)

    def admit(self, peer: str, now: float) -> bool:
        if peer in self._admitted:
            return True
        if len(self._admitted) >= self._max:
            return False
        if self._new.take("", 1, now) < 0:
            self._new.give_back("", 1)  # a refused source does not use up the rate
            return False
        self._admitted.add(peer)
        return True

    @property
    def admitted(self) -> int:
        return len(self._admitted)


class Gate:
    """Backpressure from a queue to its producers: while `closed`, producers that asked to wait
    are paused; opening the gate resumes them all."""

    def __init__(self) -> None:
        self.closed = False
        self._waiting: list[Callable[[], None]] = []

    def wait(self, resume: Callable[[], None]) -> None:
        self._waiting.append(resume)

    def set_closed(self, closed: bool) -> None:
        if closed == self.closed:
            return
        self.closed = closed
        if not closed:
            waiting, self._waiting = self._waiting, []
            for resume in waiting:
                resume()
