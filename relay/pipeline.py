"""Where the stages meet: frame -> SyslogMessage -> ceelog line -> file, plus the registry.

Holds no socket and opens no file. `handle` is the per-message hot path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import msgspec

from relay.config import Route
from relay.forward.origin import origin_from_sd, split_origin
from relay.ingest.limits import Admission, SourceFilter
from relay.message import Offered, SyslogMessage
from relay.output.routes import NO_ROUTE, Outcome, PodNames, Router, render_for_route
from relay.output.template import (
    HEADER_CACHE_ENTRIES,
    LINE_END,
    LINE_START,
    CeeTemplate,
    escape,
)
from relay.parse import MAX_MESSAGE_BYTES, parse
from relay.parse.fast import (
    CONTROL_BYTES,
    PRI_FIELD,
    PRI_VALUES,
    RFC3164_HOSTNAME,
    RFC3164_TAG,
    RFC3164_TIMESTAMP,
)
from relay.parse.rfc3164 import TAG_MAX_BYTES

if TYPE_CHECKING:
    from relay.forward.targets import Forwarders

# The fast header (relay.parse.fast) with two more groups: `hostname tag` (2), which with the
# PRI (1) is the key of the pipeline's header cache, and the body (6); hostname (3), tag (4) and
# programname (5) are only read on a cache miss, a route or forwarding (taking fewer groups per
# frame, and hashing two of them instead of four, costs 100 ns less per frame, measured).
_match_3164 = re.compile(
    PRI_FIELD + RFC3164_TIMESTAMP + rb" ((" + RFC3164_HOSTNAME + rb") " + RFC3164_TAG + rb")(.*)",
    re.DOTALL,
).match


class LineSink(Protocol):
    def append(self, name: str, line: bytes) -> None: ...

    def extend(self, name: str, lines: list[bytes]) -> None: ...

    def extend_block(self, name: str, block: bytes, count: int) -> None: ...


class SourceObserver(Protocol):
    def observe(
        self, ip: str, hostname: bytes, received_at: float, count: int = 1, via: str | None = None
    ) -> None: ...


class HostnameLookup(Protocol):
    def fromhost(self, ip: str) -> bytes: ...


OVERFLOW_NAME = "ceelog-overflow.log"
BATCH_FRAMES = 128  # frames rendered together at most (see handle_batch)


def ceelog_name(ip: str) -> str:
    """PLURA's file name for a source: `ceelog-<FROMHOST-IP>.log`."""
    return f"ceelog-{ip}.log"


def _lines(heads: list[bytes], bodies: list[bytes], timegenerated: bytes) -> bytes:
    """The batch's lines as one bytes: `heads[i]` + escaped `bodies[i]` between the constant
    parts. Bodies hold no LF (a control byte: such frames take the general path, whose body is
    empty), so they are escaped joined by LF and split again: one replace per escaped byte for
    the whole batch (template.escape's rules)."""
    count = len(heads)
    if count == 1:  # a TCP read or a quiet sender's datagram: the plain join is cheaper
        return b"".join((LINE_START, timegenerated, heads[0], escape(bodies[0]), LINE_END))
    joined = b"\n".join(bodies)
    escaped = escape(joined)  # one pass per escaped byte that occurs, for the whole batch
    if escaped is not joined:
        bodies = escaped.split(b"\n")
    parts: list[bytes] = [b""] * (3 * count + 1)
    parts[0] = LINE_START + timegenerated
    parts[1::3] = heads
    parts[2::3] = bodies
    parts[3::3] = [LINE_END + LINE_START + timegenerated] * count
    parts[-1] = LINE_END
    return b"".join(parts)


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
        routes: Sequence[Route] = (),
        admission: Admission | None = None,
        trusted_relays: SourceFilter | None = None,
        forward: Forwarders | None = None,
        pods: Callable[[str], PodNames | None] | None = None,
    ) -> None:
        """`trusted_relays`: senders whose `[origip=...]` stamps are honoured (forward.origin);
        `forward`: upstream targets every message is also offered to; `pods`: the pod behind a
        source, for route file names (relay.kube's index, in the process that has it)."""
        self._sink = sink
        self._forward = forward
        self._relays = trusted_relays
        self._is_relay: dict[str, bool] = {}
        self._admission = admission
        self._router = Router(routes, pods) if routes else None
        self._observer = observer
        self._hostnames = hostnames
        self._max = max_message_bytes
        self._rsyslog_sd = rsyslog_sd
        self._template = CeeTemplate()
        # (PRI digits, `hostname tag`) -> the line's header (the template's, for that frame's
        # programname, hostname, tag and PRI); None: the tag is too long for the fast path
        self._fast_headers: dict[tuple[bytes, bytes], bytes | None] = {}
        self._names: dict[str, str] = {}
        self.received = 0
        self.general = 0  # frames that took the general parser (odd shapes, control bytes)
        self.overflow = 0  # messages of sources not admitted (ceelog-overflow.log)
        self.origin_stamped = 0  # messages filed under their `[origip=...]` address
        self.origin_invalid = 0  # stamps from trusted relays that held no valid address

    def handle_batch(
        self, frames: list[bytes], peer: str, received_at: float, lossless: bool = False
    ) -> None:
        """Frames from one peer received together (a TCP read or a UDP batch): one sink call,
        one registry update, one timegenerated (as rsyslog's imudp takes one per recvmmsg).

        The hot path: a frame of the common RFC 3164 shape that no route claims goes from the
        fast regex's groups straight to the cached line header, without a SyslogMessage in
        between, and a frame that begins with the previous such frame's header bytes (the same
        second, sender and tag) skips even the regex; the result is what render(parse(frame))
        gives (tests/test_pipeline.py checks it). Anything else takes the general path.

        `lossless`: the frames came over TCP (a full forward spool in `block` mode still takes
        them: the sender is paused after this batch instead).
        """
        if len(frames) > BATCH_FRAMES:
            # a TCP read of 256 KiB holds ~1,200 frames: rendered whole, its copies (joined,
            # escaped, split, lines) outgrow the CPU cache; in parts of 128 the same work costs
            # 1.3 instead of 1.8 us per message (same output: lines keep their order)
            # (the registry still hears of the batch once, with the last frame's hostname)
            last = (len(frames) - 1) // BATCH_FRAMES * BATCH_FRAMES  # where the last part starts
            for start in range(0, len(frames), BATCH_FRAMES):
                part = frames[start : start + BATCH_FRAMES]
                observed = len(frames) if start == last else 0
                self._handle_part(part, peer, received_at, lossless, observed)
        else:
            self._handle_part(frames, peer, received_at, lossless, len(frames))

    def _handle_part(
        self, frames: list[bytes], peer: str, received_at: float, lossless: bool, observed: int
    ) -> None:
        """handle_batch for at most BATCH_FRAMES frames; `observed`: how many frames to tell the
        registry of (the whole batch's count on its last part, 0 on the others)."""
        forward = self._forward
        # what the forward targets are offered, in order (None: no forwarding)
        offered: list[Offered] | None = [] if forward is not None else None
        if self._relays is not None and self._relayed(peer):
            self._handle_relayed(frames, peer, received_at, offered)
            if forward is not None and offered:
                forward.take(offered, peer, received_at, lossless, self._parse)
            return
        template, router = self._template, self._router
        timegenerated = template.timegenerated(received_at)
        headers, header_for = template.headers, template.header
        # The batch is rendered as a whole: per frame only the regex, the header lookup and two
        # list appends; the control-byte check, the escaping and the joining of the lines are
        # one C-level pass each over the batch (per frame, their call overheads cost more than
        # the work). A line is LINE_START timegenerated head body LINE_END: on the fast path
        # head is the cached header and body the raw msg (escaped below, all bodies at once);
        # a general-path frame's whole rendered middle is its head, with an empty body.
        heads: list[bytes] = []
        bodies: list[bytes] = []
        add_head, add_body = heads.append, bodies.append
        joined = frames[0] if len(frames) == 1 else b"".join(frames)
        clean = len(joined.translate(None, CONTROL_BYTES)) == len(joined)
        hostname = b""
        last: re.Match[bytes] | None = None  # the last frame's, if it took the fast path
        fast = self._fast_headers
        plain = router is None and offered is None  # nothing needs the frame's fields
        # The last fast-path frame's header (through the byte after its tag, or its end), the
        # body's offset and the line's head: a frame that starts with the same bytes gets the
        # same groups from the regex, which reads no further (its tag is possessive), so it
        # needs no match. A sender's frames of one second share their header: one startswith
        # instead of the regex, its groups and the cache lookup (measured: 0.5 us per frame).
        same: bytes | None = None
        cut, head, same_match = 0, b"", last
        for frame in frames:
            if clean or len(frame.translate(None, CONTROL_BYTES)) == len(frame):
                if same is not None and frame.startswith(same):
                    last = same_match  # (the hostname is that frame's)
                    add_head(head)
                    add_body(frame[cut:])
                    continue
                match = _match_3164(frame)
            else:
                match = None  # a control byte: sanitizing changes it (the general parser)
            if match is not None:
                if plain:
                    pri_text, host_tag, body = match.group(1, 2, 6)
                    found = fast.get((pri_text, host_tag)) or self._fast_header(match)
                    if found is not None:
                        last = same_match = match
                        head, cut = found, match.end(2)
                        # (a frame that ends with its tag: the regex saw the end, which a
                        # longer frame does not share)
                        same = frame[: cut + 1] if len(frame) > cut else None
                        add_head(head)
                        add_body(body)
                        continue
                else:
                    pri_text, _, host, tag, program, body = match.groups()
                    if len(tag) <= TAG_MAX_BYTES:
                        last, pri = match, PRI_VALUES[pri_text]
                        if router is None or router.decide(program, tag, pri, peer) is NO_ROUTE:
                            if offered is not None:
                                offered.append((frame, len(frame) - len(body), tag, program, pri))
                            key = (program, host, tag, pri)
                            add_head(headers.get(key) or header_for(key))
                            add_body(body)
                            continue
            self.general += 1  # (or a route claims it: routes need the whole message)
            message = self._parse(frame, peer, received_at)
            last, hostname = None, message.hostname
            outcome = None if router is None else self._route(router, message, peer, timegenerated)
            if outcome is not None and outcome.dropped:
                continue
            if offered is not None:
                offered.append(message)
            if outcome is None or outcome.ceelog:
                add_head(template.middle(message))
                add_body(b"")
        if last is not None:
            hostname = last[3]
        if forward is not None and offered:
            forward.take(offered, peer, received_at, lossless, self._parse)
        name = self._names.get(peer) or self._admit(peer, received_at)
        if heads:
            self._sink.extend_block(name, _lines(heads, bodies, timegenerated), len(heads))
        self.received += len(frames)
        if name is OVERFLOW_NAME:
            self.overflow += len(frames)
        elif self._observer is not None and observed:
            self._observer.observe(peer, hostname, received_at, observed)

    def _fast_header(self, match: re.Match[bytes]) -> bytes | None:
        """A fast-path frame's header, on a miss of the pipeline's cache: None if its tag is
        too long (the general parser cuts it)."""
        pri_text, host_tag, host, tag, program = match.group(1, 2, 3, 4, 5)
        header = None
        if len(tag) <= TAG_MAX_BYTES:
            key = (program, host, tag, PRI_VALUES[pri_text])
            header = self._template.headers.get(key) or self._template.header(key)
        if len(self._fast_headers) >= HEADER_CACHE_ENTRIES:
            self._fast_headers.clear()  # hostile variety: start over rather than grow
        self._fast_headers[(pri_text, host_tag)] = header
        return header

    def route_dropped(self) -> dict[str, int]:
        """Per route name: messages its `action = "drop"` took (drop routes only)."""
        router = self._router
        if router is None:
            return {}
        return {name: n for name, n, drops in zip(router.names, router.dropped, router.drops,
                                                  strict=True) if drops}  # fmt: skip

    def _relayed(self, peer: str) -> bool:
        relayed = self._is_relay.get(peer)
        if relayed is None:
            assert self._relays is not None
            relayed = self._is_relay[peer] = self._relays.allows(peer)
            if len(self._is_relay) > 100_000:
                self._is_relay.clear()
        return relayed

    def _handle_relayed(
        self,
        frames: list[bytes],
        relay: str,
        received_at: float,
        offered: list[Offered] | None,
    ) -> None:
        """Messages from a trusted relay: each is filed under its stamped origin address."""
        timegenerated = self._template.timegenerated(received_at)
        for frame in frames:
            message = self._parse(frame, relay, received_at)
            origin, msg, invalid = split_origin(message.msg)
            if origin is None and not invalid:
                origin, invalid = origin_from_sd(message.raw)  # a relay's rfc5424 format
            self.origin_invalid += invalid
            source, via = relay, None
            if origin is not None:
                self.origin_stamped += 1
                source, via = origin, relay
                message = msgspec.structs.replace(message, msg=msg, peer=origin)
            self.received += 1
            name = self._names.get(source) or self._admit(source, received_at)
            outcome = None
            if self._router is not None:
                outcome = self._route(self._router, message, source, timegenerated)
            if offered is not None and not (outcome and outcome.dropped):
                offered.append(message)  # a relay behind a relay: the origin goes on
            if outcome is None or outcome.ceelog:
                self._sink.append(name, self._template.render_at(message, timegenerated))
            if name is OVERFLOW_NAME:
                self.overflow += 1
            elif self._observer is not None:
                self._observer.observe(source, message.hostname, received_at, 1, via)

    def _route(self, router: Router, message: SyslogMessage, source: str, at: bytes) -> Outcome:
        """Write `message` to the files of the routes it matches (`source`: the sender, or the
        trusted origin, for `{ip}`); the outcome says whether it goes on."""
        outcome = router.route(message, source)
        for target in outcome.targets:
            line = render_for_route(target, message, at, self._template)
            self._sink.append(router.file_name(target, source), line)
        return outcome

    def _parse(self, frame: bytes, peer: str, received_at: float) -> SyslogMessage:
        return parse(
            frame,
            received_at=received_at,
            peer=peer,
            fromhost=self._hostnames.fromhost(peer) if self._hostnames is not None else None,
            max_bytes=self._max,
            rsyslog_sd=self._rsyslog_sd,
        )

    def _admit(self, peer: str, received_at: float) -> str:
        """The file of a source not seen lately: its own, or the overflow file."""
        if self._admission is not None and not self._admission.admit(peer, received_at):
            return OVERFLOW_NAME  # not cached: a later message may be admitted
        if len(self._names) >= 100_000:  # a bound, not a cache policy: names are cheap
            self._names.clear()
        name = self._names[peer] = ceelog_name(peer)
        return name

    def handle(self, frame: bytes, peer: str, received_at: float) -> None:
        self.handle_batch([frame], peer, received_at)
