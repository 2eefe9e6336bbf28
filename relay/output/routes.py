"""`[[route]]` rules: which messages go to which extra file, with which template.

A route matches on programname / syslogtag (equals or contains), facility, severity, source
network and text in msg; a matching message is written to the route's file (its name may hold
the sender, `{ip}`) with its template and, if the route says `stop`, goes no further (no later
route, no ceelog file); a drop route takes it out altogether. Which routes the header selects
depends only on (programname, syslogtag, pri, source), so it is cached; msg conditions are
checked per message after that.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from string import Formatter
from typing import Generic, NamedTuple, Protocol, TypeVar

from relay.config import Route, RouteMatch
from relay.message import SyslogMessage
from relay.output.template import (
    CeeTemplate,
    render_compact,
    render_plain,
    render_traditional,
)
from relay.parse import sanitize

DECISION_CACHE_ENTRIES = 8192
NAME_CACHE_ENTRIES = 4096
T = TypeVar("T")


class FileName:
    """A route's file name, its `{...}` placeholders filled in per message.

    A placeholder is a name in `config.ROUTE_FILE_PLACEHOLDERS` and a key of the `values` given
    to `expand` (`file_values`): `{ip}`, and the pod behind the address. Values must be safe in
    a path: `{ip}` is a checked IP address, the pod's names are checked Kubernetes names.
    """

    __slots__ = ("_cache", "_parts", "fields", "static")

    def __init__(self, pattern: str) -> None:
        self._parts = [(literal, field) for literal, field, _, _ in Formatter().parse(pattern)]
        self.fields = tuple(dict.fromkeys(f for _, f in self._parts if f is not None))
        self.static = None if self.fields else "".join(literal for literal, _ in self._parts)
        self._cache: dict[tuple[str, ...], str] = {}

    def expand(self, values: Mapping[str, str]) -> str:
        if self.static is not None:
            return self.static
        key = tuple(values[field] for field in self.fields)
        name = self._cache.get(key)
        if name is None:
            name = "".join(literal + (values[f] if f else "") for literal, f in self._parts)
            if len(self._cache) >= NAME_CACHE_ENTRIES:
                self._cache.clear()
            self._cache[key] = name
        return name

    def __repr__(self) -> str:
        return f"FileName({''.join(lit + (f'{{{f}}}' if f else '') for lit, f in self._parts)!r})"


UNKNOWN = "unknown"
# a Kubernetes object name (DNS-1123 subdomain): never `/`, `..` or empty, so safe in a path
_KUBE_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?\Z")


class PodNames(Protocol):
    """What a route's file name may use of the pod behind a source (relay.kube.index.Pod)."""

    @property
    def namespace(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def workload(self) -> str: ...


def _kube_name(value: str) -> str:
    return value if _KUBE_NAME.match(value) and ".." not in value else UNKNOWN


def file_values(source: str, pod: PodNames | None) -> dict[str, str]:
    """The placeholders' values for one source: `{ip}` (a checked address) and, with pod
    identity, `{namespace}`, `{pod}`, `{workload}`, each checked as a Kubernetes name before it
    touches a path; `unknown` when there is no pod (the watch off, or not a known pod)."""
    if pod is None:
        return {"ip": source, "namespace": UNKNOWN, "pod": UNKNOWN, "workload": UNKNOWN}
    return {
        "ip": source,
        "namespace": _kube_name(pod.namespace),
        "pod": _kube_name(pod.name),
        "workload": _kube_name(pod.workload),
    }


def expand_file_name(pattern: str, source: str, pod: PodNames | None) -> str:
    return FileName(pattern).expand(file_values(source, pod))


class Target(NamedTuple):
    file: FileName  # for the sink: relative to the log dir, or absolute
    template: str  # see config.Route.template
    programname: bytes | None = None  # set_programname (template "ceelog")

    def name(self, source: str, pod: PodNames | None = None) -> str:
        if self.file.static is not None:
            return self.file.static
        return self.file.expand(file_values(source, pod))


class Step(NamedTuple):
    """One route whose conditions on (programname, syslogtag, pri, source) hold."""

    route: int  # index in the routes, for its counters
    target: Target | None  # None: the route drops
    needles: tuple[bytes, ...]  # msg_contains: any of them in msg (empty: no condition)
    stop: bool


Decision = tuple[Step, ...]
NO_ROUTE: Decision = ()


class Outcome(NamedTuple):
    targets: list[Target]
    ceelog: bool  # also write the ceelog-<ip>.log line
    dropped: bool  # a drop route took it: no file, no forward target


DecisionKey = tuple[bytes, bytes, int, str]


class Matcher:
    """A `RouteMatch` (routes and forward targets): every condition given must hold."""

    def __init__(self, match: RouteMatch) -> None:
        self.programname_equals = _encoded(match.programname_equals)
        self.programname_contains = _encoded(match.programname_contains)
        self.syslogtag_equals = _encoded(match.syslogtag_equals)
        self.syslogtag_contains = _encoded(match.syslogtag_contains)
        self.facilities = frozenset(match.facilities)
        self.severity_max = match.severity_max
        self.networks = [ipaddress.ip_network(c, strict=False) for c in match.source_cidrs]
        self.everything = match == RouteMatch()

    def matches(self, programname: bytes, syslogtag: bytes, pri: int, peer: str) -> bool:
        facility, severity = (pri >> 3, pri & 7) if pri >= 0 else (-1, 7)
        return (
            (self.programname_equals is None or programname == self.programname_equals)
            and (self.programname_contains is None or self.programname_contains in programname)
            and (self.syslogtag_equals is None or syslogtag == self.syslogtag_equals)
            and (self.syslogtag_contains is None or self.syslogtag_contains in syslogtag)
            and (not self.facilities or facility in self.facilities)
            and (self.severity_max is None or severity <= self.severity_max)
            and (not self.networks or _in_networks(peer, self.networks))
        )


class _Rule(Matcher):
    def __init__(self, index: int, route: Route) -> None:
        super().__init__(route.match)
        target = None
        if route.action == "write":
            fixed = route.set_programname
            target = Target(
                FileName(route.file), route.template, None if fixed is None else fixed.encode()
            )
        needles = tuple(text.encode() for text in route.match.msg_contains)
        self.step = Step(index, target, needles, route.stop or target is None)


class Decisions(Generic[T]):
    """`decide(programname, syslogtag, pri, source)`, cached: the answers of routes and forward
    filters depend on nothing else, and a few keys cover nearly every message."""

    def __init__(self, decide: Callable[[bytes, bytes, int, str], T]) -> None:
        self._decide = decide
        self._cache: dict[DecisionKey, T] = {}

    def get(self, programname: bytes, syslogtag: bytes, pri: int, peer: str) -> T:
        key = (programname, syslogtag, pri, peer)
        decision = self._cache.get(key)
        if decision is None:
            decision = self._decide(*key)
            if len(self._cache) >= DECISION_CACHE_ENTRIES:
                self._cache.clear()
            self._cache[key] = decision
        return decision


class Router:
    """The routes in order. `decide` (cached) gives the routes a message's header selects;
    `route` then applies their msg conditions: the first drop or `stop` ends it."""

    def __init__(
        self, routes: Sequence[Route], pods: Callable[[str], PodNames | None] | None = None
    ) -> None:
        """`pods(ip)`: the pod behind a source now, for `{namespace}` `{pod}` `{workload}`."""
        self._pods = pods
        self._rules = [_Rule(index, route) for index, route in enumerate(routes)]
        self.names = [route.name for route in routes]
        self.dropped = [0] * len(routes)  # per route: messages a drop route took
        self.drops = [route.action == "drop" for route in routes]
        self.decide = Decisions(self._decide).get  # a bound method: the cheapest call

    def file_name(self, target: Target, source: str) -> str:
        """Where `target`'s line of a message from `source` goes (the pod looked up each time:
        the pod behind an IP changes)."""
        if target.file.static is not None:
            return target.file.static
        return target.name(source, self._pods(source) if self._pods is not None else None)

    def _decide(self, programname: bytes, syslogtag: bytes, pri: int, peer: str) -> Decision:
        steps = []
        for rule in self._rules:
            if rule.matches(programname, syslogtag, pri, peer):
                steps.append(rule.step)
                if rule.step.stop and not rule.step.needles:
                    break  # nothing after an unconditional stop can apply
        return tuple(steps) if steps else NO_ROUTE

    def route(self, message: SyslogMessage, source: str) -> Outcome:
        targets: list[Target] = []
        msg = message.msg
        for step in self.decide(message.programname, message.syslogtag, message.pri, source):
            if step.needles and not any(needle in msg for needle in step.needles):
                continue
            if step.target is None:
                self.dropped[step.route] += 1
                return Outcome([], False, True)
            targets.append(step.target)
            if step.stop:
                return Outcome(targets, False, False)
        return Outcome(targets, True, False)


def render_for_route(
    target: Target, message: SyslogMessage, timegenerated: bytes, cee: CeeTemplate
) -> bytes:
    """One line of a route's file."""
    template = target.template
    if template == "msg":
        # rsyslog's "%msg%\n" (PLURA's weblog rule): the space rsyslog keeps after `tag:` stays
        return message.msg + b"\n"
    if template == "raw":
        return sanitize(message.raw) + b"\n"
    if template == "plain":
        return render_plain(message)
    if template == "traditional":
        return render_traditional(message)
    if template == "ceelog-compact":
        return render_compact(message, timegenerated)
    if target.programname is not None:
        return cee.render_fixed_programname(message, timegenerated, target.programname)
    return cee.render_at(message, timegenerated)


def _encoded(text: str | None) -> bytes | None:
    return None if text is None else text.encode()


def _in_networks(peer: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        address = ipaddress.ip_address(peer.partition("%")[0])
    except ValueError:
        return False
    return any(address in network for network in networks)
