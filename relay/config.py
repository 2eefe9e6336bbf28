"""Configuration: one frozen, typed tree decoded from TOML with msgspec, validated once.

Precedence: defaults < file < command-line flags actually given. Unknown keys and bad values are
rejected with a message naming the key and what was expected.
"""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]
MessageBytes = Annotated[int, msgspec.Meta(ge=480, le=1 << 20)]


class Base(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class ListenConfig(Base, frozen=True, forbid_unknown_fields=True):
    addresses: list[str] = msgspec.field(default_factory=lambda: ["0.0.0.0:514"])
    """`HOST:PORT` (IPv6 as `[::1]:514`); each gets a UDP and a TCP listener. `auto` or
    `auto:PORT`: the address of the pod-network bridge (see `interface`)."""
    interface: str = ""
    """Bridge whose addresses `auto` binds to; "" tries cni0, docker0, then flannel's subnet."""
    flannel_subnet_env: str = "/run/flannel/subnet.env"
    """flannel's FLANNEL_SUBNET gives the bridge's .1 address before the bridge exists."""
    freebind: bool = False
    """Bind even to an address not (yet) on this host (IP_FREEBIND); `auto` sets it when it
    binds to flannel's address ahead of the bridge."""
    udp: bool = True
    tcp: bool = True
    rcvbuf_bytes: Annotated[int, msgspec.Meta(ge=0)] = 8 * 1024 * 1024
    """SO_RCVBUF for UDP sockets (SO_RCVBUFFORCE is tried first when running as root)."""
    max_message_bytes: MessageBytes = 8096
    """Messages are cut at this size, as rsyslog's maxMessageSize (default 8096)."""
    oversize: Literal["truncate", "split", "rsyslog"] = "truncate"
    """TCP frames longer than max_message_bytes: keep the first part and count the rest as
    dropped (`truncate`), deliver every part as its own message (`split`, lossless), or split
    as rsyslog does, losing one byte at each cut (`rsyslog`, for comparisons only)."""
    drain_timeout_s: PositiveFloat = 1.0
    """At shutdown, how long open TCP connections may still deliver what is in flight."""
    allowed_sources: list[str] = msgspec.field(default_factory=list)
    """CIDRs allowed to send (UDP and TCP), checked before any other work. Empty: the bridge's
    subnet when `auto` bound to a bridge, else everyone."""
    rate_limit_per_source: NonNegativeFloat = 0.0
    """Messages per second per source address (0: no limit). Over UDP the excess is dropped
    and counted; over TCP the connection is paused instead (nothing is lost)."""
    rate_limit_burst: Annotated[int, msgspec.Meta(ge=1)] = 10_000
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 10_000
    """Open TCP connections at most; more are refused (closed at once) and counted."""
    idle_timeout_s: NonNegativeFloat = 3600.0
    """A TCP connection silent for this long is closed (0: never)."""


class OutputConfig(Base, frozen=True, forbid_unknown_fields=True):
    log_dir: str = "/var/log/plura"
    flush_interval_s: PositiveFloat = 0.02
    """A received line is written at most this long after it arrived (batching the writes of
    everything received meanwhile: one write per file)."""
    max_open_files: Annotated[int, msgspec.Meta(ge=1)] = 1024
    file_mode: Annotated[int, msgspec.Meta(ge=0, le=0o777)] = 0o640
    dir_mode: Annotated[int, msgspec.Meta(ge=0, le=0o777)] = 0o755
    fsync_on_close: bool = True
    reopen_check_interval_s: PositiveFloat = 1.0
    """How often open files are checked (one stat each) for a rename, delete or replace by a
    log rotator; such a file is reopened by name, no SIGHUP needed."""


class ParseConfig(Base, frozen=True, forbid_unknown_fields=True):
    unterminated_sd: Literal["keep", "rsyslog"] = "keep"
    """RFC 5424 structured data with no `] ` after it: rsyslog keeps only the message's last
    byte as MSG (`rsyslog`); by default the data from the SD on is kept as MSG (`keep`)."""


class HostnameConfig(Base, frozen=True, forbid_unknown_fields=True):
    fallback: Literal["ip", "dns"] = "ip"
    """Hostname of a message without one: the sender's IP (default) or, as rsyslog does, its
    reverse-DNS name (looked up off the hot path and cached)."""
    dns_cache_ttl_s: PositiveFloat = 3600.0


class ChildrenConfig(Base, frozen=True, forbid_unknown_fields=True):
    hook_command: list[str] = msgspec.field(default_factory=list)
    """Run once per new child server, with the child as JSON on stdin; retried until exit 0."""
    hook_url: str = ""
    """POSTed the child as JSON once per new child server; retried until a 2xx answer."""
    save_interval_s: PositiveFloat = 1.0
    inactive_after_s: PositiveFloat = 3600.0
    """A child not heard from for this long counts as inactive."""
    retention_s: NonNegativeFloat = 0.0
    """Remove an inactive child's ceelog file this long after it became inactive (0: keep)."""
    max_children: Annotated[int, msgspec.Meta(ge=1)] = 10_000
    """Sources beyond this many go to ceelog-overflow.log and are not registered."""
    max_new_per_second: PositiveFloat = 100.0
    """New sources admitted per second (burst: new_sources_burst); beyond, overflow."""
    new_sources_burst: Annotated[int, msgspec.Meta(ge=1)] = 1000
    hook_backoff_initial_s: PositiveFloat = 1.0
    """First retry delay of a failed hook; doubles (with jitter) up to hook_backoff_max_s."""
    hook_backoff_max_s: PositiveFloat = 300.0
    hook_timeout_s: PositiveFloat = 10.0


class RouteMatch(Base, frozen=True, forbid_unknown_fields=True):
    """All given conditions must hold (an empty match matches everything)."""

    programname_equals: str | None = None
    programname_contains: str | None = None
    syslogtag_equals: str | None = None
    syslogtag_contains: str | None = None
    facilities: list[Annotated[int, msgspec.Meta(ge=0, le=23)]] = msgspec.field(
        default_factory=list
    )
    severity_max: Annotated[int, msgspec.Meta(ge=0, le=7)] | None = None
    """Severities 0 (emerg) up to this one (6 = info and more important)."""
    source_cidrs: list[str] = msgspec.field(default_factory=list)


class Route(Base, frozen=True, forbid_unknown_fields=True):
    name: str
    file: str
    """Output file: relative to output.log_dir, or absolute."""
    template: Literal["ceelog", "msg", "raw"] = "ceelog"
    """`ceelog` (PLURA's line), `msg` (the bare MSG: nginx's JSON access line), `raw` (the
    message as received, control bytes escaped)."""
    stop: bool = True
    """Matching messages do not go on to later routes nor to their ceelog file."""
    match: RouteMatch = msgspec.field(default_factory=RouteMatch)


class OriginConfig(Base, frozen=True, forbid_unknown_fields=True):
    trust_origip: bool = False
    """Honour PLURA's `[origip=<ip>]` relay stamp: file the message under that address, strip
    the stamp from msg, and register the child under it (with the relay as `via`)."""
    trusted_sources: list[str] = msgspec.field(default_factory=list)
    """CIDRs of the relays / NAT addresses whose stamps are honoured; others' stay text."""


class MetricsConfig(Base, frozen=True, forbid_unknown_fields=True):
    listen: str = "127.0.0.1:9514"
    """HTTP `HOST:PORT` for /metrics, /healthz and /readyz; "" turns it off."""


class LogConfig(Base, frozen=True, forbid_unknown_fields=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class Config(Base, frozen=True, forbid_unknown_fields=True):
    state_dir: str = "/var/lib/plura-relay"
    workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    listen: ListenConfig = msgspec.field(default_factory=ListenConfig)
    output: OutputConfig = msgspec.field(default_factory=OutputConfig)
    parse: ParseConfig = msgspec.field(default_factory=ParseConfig)
    hostname: HostnameConfig = msgspec.field(default_factory=HostnameConfig)
    children: ChildrenConfig = msgspec.field(default_factory=ChildrenConfig)
    origin: OriginConfig = msgspec.field(default_factory=OriginConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    route: list[Route] = msgspec.field(default_factory=list)
    """`[[route]]` sections, tried in order for every message."""


class ConfigError(ValueError):
    """The configuration file or an override is not valid; the message says where and why."""


def parse_address(text: str, default_port: int = 514) -> tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT`, `HOST` or `[V6]` -> (host, port); raises ValueError."""
    host, port = text, default_port
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"expected [IPv6]:PORT, got {text!r}")
        if rest:
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    if host not in ("", "localhost"):
        ipaddress.ip_address(host)  # listeners bind to addresses, not names
    return host, port


def is_auto(address: str) -> bool:
    if address == "auto":
        return True
    if not address.startswith("auto:"):
        return False
    if not address[5:].isdigit() or not 0 <= int(address[5:]) <= 65535:
        raise ValueError(f"expected auto:PORT, got {address!r}")
    return True


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the TOML file, then `overrides` (dotted keys, e.g. `output.log_dir`)."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    where = f"{path}: " if path is not None else ""
    try:
        config = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where}{exc}") from exc
    for address in config.listen.addresses:
        try:
            if not is_auto(address):
                parse_address(address)
        except ValueError as exc:
            raise ConfigError(
                f"{where}listen.addresses: expected HOST:PORT with an IP address, or auto[:PORT]"
                f" ({exc})"
            ) from exc
    if config.origin.trust_origip and not config.origin.trusted_sources:
        raise ConfigError(f"{where}origin.trusted_sources: expected the relays' CIDRs")
    for cidr in [*config.listen.allowed_sources, *config.origin.trusted_sources]:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise ConfigError(f"{where}allowed_sources / trusted_sources: {exc}") from exc
    for index, route in enumerate(config.route):
        for cidr in route.match.source_cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ConfigError(f"{where}route[{index}].match.source_cidrs: {exc}") from exc
    return config
