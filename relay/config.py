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
MessageBytes = Annotated[int, msgspec.Meta(ge=480, le=1 << 20)]


class Base(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class ListenConfig(Base, frozen=True, forbid_unknown_fields=True):
    addresses: list[str] = msgspec.field(default_factory=lambda: ["0.0.0.0:514"])
    """`HOST:PORT` (IPv6 as `[::1]:514`); each gets a UDP and a TCP listener."""
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


class OutputConfig(Base, frozen=True, forbid_unknown_fields=True):
    log_dir: str = "/var/log/plura"
    flush_interval_s: PositiveFloat = 0.02
    """A received line is written at most this long after it arrived (batching the writes of
    everything received meanwhile: one write per file)."""
    max_open_files: Annotated[int, msgspec.Meta(ge=1)] = 1024
    file_mode: Annotated[int, msgspec.Meta(ge=0, le=0o777)] = 0o640
    dir_mode: Annotated[int, msgspec.Meta(ge=0, le=0o777)] = 0o755
    fsync_on_close: bool = True


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
    hook_backoff_initial_s: PositiveFloat = 1.0
    """First retry delay of a failed hook; doubles (with jitter) up to hook_backoff_max_s."""
    hook_backoff_max_s: PositiveFloat = 300.0
    hook_timeout_s: PositiveFloat = 10.0


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
    log: LogConfig = msgspec.field(default_factory=LogConfig)


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
            parse_address(address)
        except ValueError as exc:
            raise ConfigError(
                f"{where}listen.addresses: expected HOST:PORT with an IP address ({exc})"
            ) from exc
    return config
