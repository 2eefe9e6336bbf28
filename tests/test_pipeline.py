"""The pipeline's fused hot path must write exactly what render(parse(frame)) writes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import relay.pipeline as pipeline_module
from relay.config import Route, RouteMatch
from relay.output.routes import FileName, Target, render_for_route
from relay.output.template import CeeTemplate
from relay.parse import parse
from relay.pipeline import Pipeline, ceelog_name
from tests.memory_sink import Lines


class Sources:
    def __init__(self) -> None:
        self.seen: list[tuple[str, bytes, float, int]] = []

    def observe(self, ip: str, hostname: bytes, received_at: float, count: int = 1) -> None:
        self.seen.append((ip, hostname, received_at, count))


HEADS = [
    b"<30>Nov 26 21:00:01 web-7f9c nginx[1234]: ", b"<13>Jan  5 10:11:12 host01 app:",
    b"<191>Dec 31 23:59:60 h.example.com a/b[1]: ", b"<0>Feb 29 00:00:00 x \"q\"\\: ",
    b"<13>Jan  5 10:11:12 host01 ", b"<13>1 2024-01-05T10:11:12Z host01 app 42 - - ",
    b"<13>Jan  5 10:11:12 su: ", b"no header at all ", b"<999>bad pri ",
    b"<13>Jan  5 10:11:12 host01 " + b"t" * 520 + b"[1]: ",  # a tag over 510 bytes: general
    # prefixes of each other, the body going on with the tag: a frame sharing the previous
    # one's header bytes takes its groups without the regex only if the regex reads no further
    b"<13>Jan  5 10:11:12 host01 app", b"<13>Jan  5 10:11:12 host01 app[1]", b"<13>Jan  5 10:11:1",
]  # fmt: skip
BODIES = st.binary(max_size=60) | st.text(max_size=40).map(str.encode)


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(HEADS), BODIES), min_size=1, max_size=5))
def test_batch_lines_equal_render_of_parse(frames: list[tuple[bytes, bytes]]) -> None:
    raw = [head + body for head, body in frames]
    sink, sources = Lines(), Sources()
    Pipeline(sink, observer=sources).handle_batch(raw, "127.0.0.9", 1_700_000_000.25)
    template = CeeTemplate()
    expected = [
        template.render(parse(frame, received_at=1_700_000_000.25, peer="127.0.0.9"))
        for frame in raw
    ]
    assert sink.files == {ceelog_name("127.0.0.9"): expected}
    last = parse(raw[-1], received_at=0.0, peer="127.0.0.9")
    assert sources.seen == [("127.0.0.9", last.hostname, 1_700_000_000.25, len(raw))]


def test_single_frames_and_batches_agree() -> None:
    frame = b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8"
    one, many = Lines(), Lines()
    Pipeline(one).handle(frame, "10.0.0.1", 5.0)
    Pipeline(many).handle_batch([frame], "10.0.0.1", 5.0)
    assert one.files == many.files
    assert one.files["ceelog-10.0.0.1.log"][0].endswith(
        b'"msg":" \'su root\' failed for lonvick on \\/dev\\/pts\\/8"}}\n'
    )


# heads that take the fast path, the general path, or look fast but hold a control byte
MIXED_HEADS = [*HEADS, b"<30>Nov 26 21:00:01 web\t1 nginx: ", b"<30>Nov 26 21:00:01 w nginx:\x00"]
MIXED_BODIES = BODIES | st.sampled_from([b"a/b", b'say "hi"', b"back\\slash", b"\n", b'/\\"/'])
ROUTES = [
    Route(
        name="nginx",
        file="weblog.log",
        template="msg",
        match=RouteMatch(programname_equals="nginx"),
    ),
    Route(name="app", file="app.log", stop=False, match=RouteMatch(programname_equals="app")),
]


@settings(max_examples=400, deadline=None)
@given(
    batches=st.lists(
        st.tuples(
            st.sampled_from(["127.0.0.9", "10.0.0.1", "::1"]),
            st.lists(st.tuples(st.sampled_from(MIXED_HEADS), MIXED_BODIES), max_size=80),
        ),
        min_size=1,
        max_size=4,
    ),
    max_bytes=st.sampled_from([8096, 64, 20]),
    routed=st.booleans(),
)
def test_any_batch_equals_render_of_parse_per_frame(
    batches: list[tuple[str, list[tuple[bytes, bytes]]]], max_bytes: int, routed: bool
) -> None:
    """Batches as large as a recvmmsg wake-up, from several senders, mixing fast-path and
    general frames, control bytes, escapes and truncation, with and without routes: the
    batch render writes what render(parse(frame)) writes, frame by frame, in order."""
    sink = Lines()
    routes = ROUTES if routed else []
    pipeline = Pipeline(sink, max_message_bytes=max_bytes, routes=routes)
    template = CeeTemplate()
    expected: dict[str, list[bytes]] = {}
    at = 1_700_000_000.5
    for peer, frames in batches:
        raw = [head + body for head, body in frames]
        pipeline.handle_batch(raw, peer, at)
        for frame in raw:
            message = parse(frame, received_at=at, peer=peer, max_bytes=max_bytes)
            ceelog = True
            for route in routes:
                if route.match.programname_equals == message.programname.decode("latin-1"):
                    target = Target(FileName(route.file), route.template)
                    line = render_for_route(target, message, template.timegenerated(at), template)
                    expected.setdefault(route.file, []).append(line)
                    ceelog = not route.stop
                    break
            if ceelog:
                expected.setdefault(ceelog_name(peer), []).append(template.render(message))
    assert sink.files == expected


@pytest.mark.parametrize("part", [1, 3, 7, 128])
def test_a_batch_longer_than_a_part_is_rendered_in_parts_alike(
    monkeypatch: pytest.MonkeyPatch, part: int
) -> None:
    """A TCP read of more than BATCH_FRAMES frames is rendered part by part: the lines are
    those of render(parse(frame)), in order, and the registry hears of every frame."""
    monkeypatch.setattr(pipeline_module, "BATCH_FRAMES", part)
    raw = [HEADS[i % len(HEADS)] + b'body %d a/b "q" \\' % i for i in range(300)]
    sink, sources = Lines(), Sources()
    Pipeline(sink, observer=sources).handle_batch(raw, "127.0.0.9", 1_700_000_000.25)
    template = CeeTemplate()
    expected = [
        template.render(parse(frame, received_at=1_700_000_000.25, peer="127.0.0.9"))
        for frame in raw
    ]
    assert sink.files == {ceelog_name("127.0.0.9"): expected}
    last = parse(raw[-1], received_at=0.0, peer="127.0.0.9")
    assert sources.seen == [("127.0.0.9", last.hostname, 1_700_000_000.25, len(raw))]
