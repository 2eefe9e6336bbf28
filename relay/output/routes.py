"""`[[route]]` rules: which messages go to which extra file, with which template.

A route matches on programname / syslogtag (equals or contains), facility, severity and source
network; a matching message is written to the route's file with its template and, if the route
says `stop`, goes no further (no later route, no ceelog file). The decision depends only on
(programname, syslogtag, pri, source), so it is cached.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Generic, NamedTuple, TypeVar

from relay.config import Route, RouteMatch
from relay.message import SyslogMessage
from relay.output.template import CeeTemplate
from relay.parse import sanitize

DECISION_CACHE_ENTRIES = 8192
T = TypeVar("T")


class Target(NamedTuple):
    name: str  # file name for the sink: relative to the log dir, or absolute
    template: str  # "ceelog" | "msg" | "raw"


class Decision(NamedTuple):
    targets: tuple[Target, ...]
    ceelog: bool  # also write the ceelog-<ip>.log line


NO_ROUTE = Decision((), True)
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
    def __init__(self, route: Route) -> None:
        super().__init__(route.match)
        self.route = route
        self.target = Target(route.file, route.template)


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
    def __init__(self, routes: Sequence[Route]) -> None:
        self._rules = [_Rule(route) for route in routes]
        self.decide = Decisions(self._decide).get  # a bound method: the cheapest call

    def _decide(self, programname: bytes, syslogtag: bytes, pri: int, peer: str) -> Decision:
        targets = []
        for rule in self._rules:
            if rule.matches(programname, syslogtag, pri, peer):
                targets.append(rule.target)
                if rule.route.stop:
                    return Decision(tuple(targets), False)
        return Decision(tuple(targets), True) if targets else NO_ROUTE


def render_for_route(
    template: str, message: SyslogMessage, timegenerated: bytes, cee: CeeTemplate
) -> bytes:
    """One line of a route's file."""
    if template == "msg":
        # rsyslog's "%msg%\n" (PLURA's weblog rule): the space rsyslog keeps after `tag:` stays
        return message.msg + b"\n"
    if template == "raw":
        return sanitize(message.raw) + b"\n"
    return cee.render_at(message, timegenerated)


def _encoded(text: str | None) -> bytes | None:
    return None if text is None else text.encode()


def _in_networks(peer: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        address = ipaddress.ip_address(peer.partition("%")[0])
    except ValueError:
        return False
    return any(address in network for network in networks)
