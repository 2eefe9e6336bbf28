"""Where the stages meet: frame -> SyslogMessage -> ceelog line -> file, plus the registry.

Holds no socket and opens no file. `handle` is the per-message hot path.
"""

from __future__ import annotations

from typing import Protocol

from relay.parse import MAX_MESSAGE_BYTES, parse
from relay.template import CeeTemplate


class LineSink(Protocol):
    def append(self, name: str, line: bytes) -> None: ...

    def extend(self, name: str, lines: list[bytes]) -> None: ...


class SourceObserver(Protocol):
    def observe(self, ip: str, hostname: bytes, received_at: float, count: int = 1) -> None: ...


class HostnameLookup(Protocol):
    def fromhost(self, ip: str) -> bytes: ...


def ceelog_name(ip: str) -> str:
    """PLURA's file name for a source: `ceelog-<FROMHOST-IP>.log`."""
    return f"ceelog-{ip}.log"


class Pipeline:
    """parse -> render -> sink for every frame; counts what it did."""

    def __init__(
        self,
        sink: LineSink,
        *,
        observer: SourceObserver | None = None,
        hostnames: HostnameLookup | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        rsyslog_sd: bool = False,
    ) -> None:
        self._sink = sink
        self._observer = observer
        self._hostnames = hostnames
        self._max = max_message_bytes
        self._rsyslog_sd = rsyslog_sd
        self._template = CeeTemplate()
        self._names: dict[str, str] = {}
        self.received = 0

    def handle_batch(self, frames: list[bytes], peer: str, received_at: float) -> None:
        """Frames from one peer received together (a TCP read): one sink call, one registry
        update."""
        fromhost = self._hostnames.fromhost(peer) if self._hostnames is not None else None
        render = self._template.render_at
        timegenerated = self._template.timegenerated(received_at)
        max_bytes, rsyslog_sd = self._max, self._rsyslog_sd
        lines: list[bytes] = []
        append = lines.append
        for frame in frames:
            message = parse(
                frame,
                received_at=received_at,
                peer=peer,
                fromhost=fromhost,
                max_bytes=max_bytes,
                rsyslog_sd=rsyslog_sd,
            )
            append(render(message, timegenerated))
        if not lines:
            return
        self._sink.extend(self._name(peer), lines)
        self.received += len(lines)
        if self._observer is not None:
            self._observer.observe(peer, message.hostname, received_at, len(lines))

    def _name(self, peer: str) -> str:
        name = self._names.get(peer)
        if name is None:
            name = self._names[peer] = ceelog_name(peer)
            if len(self._names) > 100_000:  # a bound, not a cache policy: names are cheap
                self._names.clear()
        return name

    def handle(self, frame: bytes, peer: str, received_at: float) -> None:
        fromhost = self._hostnames.fromhost(peer) if self._hostnames is not None else None
        message = parse(
            frame,
            received_at=received_at,
            peer=peer,
            fromhost=fromhost,
            max_bytes=self._max,
            rsyslog_sd=self._rsyslog_sd,
        )
        self._sink.append(self._name(peer), self._template.render(message))
        self.received += 1
        if self._observer is not None:
            self._observer.observe(peer, message.hostname, received_at)
