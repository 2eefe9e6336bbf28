"""Configuration: one frozen, typed tree decoded from TOML with msgspec, validated once.

Precedence: defaults < file < command-line flags actually given. Unknown keys and bad values are
rejected with a message naming the key and what was expected.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from string import Formatter
from typing import Annotated, Any, Literal, NamedTuple
from urllib.parse import urlsplit

import msgspec

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]
MessageBytes = Annotated[int, msgspec.Meta(ge=480, le=1 << 20)]


class Base(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class ListenTls(Base, frozen=True, forbid_unknown_fields=True):
    addresses: list[str] = msgspec.field(default_factory=list)
    """`HOST:PORT` of TLS listeners (the usual port is 6514); framing as on TCP."""
    cert_file: str = ""
    """PEM certificate chain of this server (required with `addresses`)."""
    key_file: str = ""
    client_ca_file: str = ""
    """PEM CA bundle that client certificates are checked against."""
    require_client_cert: bool = False
    """Refuse clients without a certificate signed by `client_ca_file` (mutual TLS)."""
    handshake_timeout_s: PositiveFloat = 10.0


class ListenRelp(Base, frozen=True, forbid_unknown_fields=True):
    addresses: list[str] = msgspec.field(default_factory=list)
    """`HOST:PORT` of RELP listeners (rsyslog's omrelp; the usual port is 2514)."""
    tls_addresses: list[str] = msgspec.field(default_factory=list)
    """`HOST:PORT` of RELP-over-TLS listeners (omrelp `tls="on"`), with the certificate keys
    of `[listen.tls]` (cert_file, key_file, client_ca_file, require_client_cert)."""
    ack: Literal["written", "fsynced"] = "written"
    """When a message is acknowledged: once its line is written to its file (and appended to
    the forward spools), which a SIGKILL of plura-relay cannot undo; or once also fsynced,
    which a host crash cannot undo either."""
    window: int = 128
    """Messages of a session received and not yet acknowledged at most; beyond, reading the
    session pauses until its acks are out (librelp's default window is 128)."""


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
    udp_batch_wait_s: NonNegativeFloat = 0.002
    """While UDP traffic is steady, the socket is read this often instead of at every
    datagram's wake-up, so that each read takes a batch (at 100,000 msg/s a fifth less CPU
    per message); a read that finds the socket empty goes back to waking per datagram. Adds
    at most this much to a line's delay (output.flush_interval_s adds more); the receive
    buffer (rcvbuf_bytes) holds what arrives meanwhile, and the wait is shortened so that it
    fills at most a quarter of it. 0: read at every wake-up."""
    max_message_bytes: MessageBytes = 8096
    """Messages are cut at this size, as rsyslog's maxMessageSize (default 8096)."""
    oversize: Literal["truncate", "split", "rsyslog"] = "truncate"
    """TCP frames longer than max_message_bytes: keep the first part and count the rest as
    dropped (`truncate`), deliver every part as its own message (`split`, lossless), or split
    as rsyslog does, losing one byte at each cut (`rsyslog`, for comparisons only)."""
    extra_frame_delimiter: Annotated[int, msgspec.Meta(ge=-1, le=255)] = -1
    """One more byte that ends a TCP frame as LF does (rsyslog's AddtlFrameDelimiter; 0 for
    the NUL that Python's SysLogHandler ends its records with). -1 (default): none."""
    drain_timeout_s: PositiveFloat = 1.0
    """At shutdown, how long open TCP connections may still deliver what is in flight."""
    allowed_sources: list[str] = msgspec.field(default_factory=list)
    """CIDRs allowed to send (UDP and TCP), checked before any other work. Empty: `pod_cidr`
    if given, else the bridge's subnet when `auto` bound to a bridge, else everyone."""
    pod_cidr: str = ""
    """The cluster's pod CIDR(s), comma-separated (`${VAR}` from the environment): the default
    of `allowed_sources`. Required when an address comes from the environment (`${HOST_IP}`:
    the node's own address is reachable from outside the pod network)."""
    rate_limit_per_source: NonNegativeFloat = 0.0
    """Messages per second per source address (0: no limit). Over UDP the excess is dropped
    and counted; over TCP the connection is paused instead (nothing is lost)."""
    rate_limit_burst: Annotated[int, msgspec.Meta(ge=1)] = 10_000
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 10_000
    """Open TCP connections at most; more are refused (closed at once) and counted."""
    max_connections_per_source: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 100
    """Open TCP and TLS connections from one address at most (per worker; steering sends all
    of an address's connections to one worker): one host cannot take every slot. A pod's
    rsyslog uses one, a relay one per worker and target; a NAT in front of many senders may
    need more. More are refused and counted."""
    idle_timeout_s: NonNegativeFloat = 3600.0
    """A TCP connection silent for this long is closed (0: never)."""
    frame_timeout_s: Annotated[float, msgspec.Meta(ge=0, le=86_400)] = 60.0
    """A TCP frame (message) begun must be complete within this long, or the connection
    counts as idle and is closed (a slow-loris sending a byte a second); 0: never. 60 s
    lets a max-size message through at 135 bytes/s."""
    tls: ListenTls = msgspec.field(default_factory=lambda: ListenTls())
    """TLS listeners (syslog over TLS, RFC 5425), e.g. for a relay sending to this one."""
    relp: ListenRelp = msgspec.field(default_factory=lambda: ListenRelp())
    """RELP listeners: every message acknowledged once it is written (rsyslog's imrelp)."""


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
    msg_contains: list[Annotated[str, msgspec.Meta(min_length=1)]] = msgspec.field(
        default_factory=list
    )
    """The msg contains any of these (rsyslog's `$msg contains`); routes only."""


ROUTE_FILE_PLACEHOLDERS = ("ip", "namespace", "pod", "workload")
"""What `{...}` a route's file name may hold: `{ip}` the sender (socket or trusted origin)."""
ProgramName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class Route(Base, frozen=True, forbid_unknown_fields=True):
    name: str
    file: str = ""
    """Output file: relative to output.log_dir, or absolute; `{ip}` is the sender's address
    (rsyslog's dynaFile with %FROMHOST-IP%). Required unless `action = "drop"`."""
    action: Literal["write", "drop"] = "write"
    """`drop`: matching messages go nowhere (no file, no later route, no forward target)."""
    set_programname: ProgramName | None = None
    """With `template = "ceelog"`: programname written as this constant (PLURA's SECUi and
    SNIPER rules)."""
    template: Literal["ceelog", "msg", "raw", "plain", "traditional", "ceelog-compact"] = "ceelog"
    """`ceelog` (PLURA's line), `msg` (rsyslog's `%msg%`: the MSG with the space rsyslog keeps
    after `tag:`, as PLURA's weblog rule writes nginx's access line), `raw` (the message as
    received, control bytes escaped), `plain` (`%HOSTNAME% %syslogtag% %msg%`), `traditional`
    (RSYSLOG_TraditionalFileFormat), `ceelog-compact` (PLURA's older CEE string template)."""
    stop: bool = True
    """Matching messages do not go on to later routes nor to their ceelog file."""
    match: RouteMatch = msgspec.field(default_factory=RouteMatch)


class ForwardTls(Base, frozen=True, forbid_unknown_fields=True):
    ca_file: str = ""
    """PEM CA bundle the upstream's certificate is checked against ("": the system's CAs)."""
    cert_file: str = ""
    """Client certificate (PEM) for an upstream that requires one; with `key_file`."""
    key_file: str = ""
    server_name: str = ""
    """Name expected in the upstream's certificate ("": `host`)."""
    verify: bool = True
    """Check the upstream's certificate and name. Turning it off is for tests only."""


FORWARD_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class Forward(Base, frozen=True, forbid_unknown_fields=True):
    """One `[[forward]]` target: an upstream collector, with its own disk spool."""

    name: Annotated[str, msgspec.Meta(pattern=FORWARD_NAME)]
    """Names the spool directory (state_dir/spool/NAME) and the metrics' `target` label."""
    host: str
    """Address or DNS name of the upstream."""
    port: Port = 514
    protocol: Literal["udp", "tcp", "tls", "relp", "relp-tls"] = "tcp"
    """`relp`, `relp-tls`: RELP (rsyslog's imrelp, plura-relay's RELP listener): a record is
    committed when the upstream has acknowledged every message of it, not by `confirm_after_s`;
    `relp-tls` checks certificates with the `tls` keys as `tls` does."""
    framing: Literal["octet-counting", "lf"] = "octet-counting"
    """TCP/TLS framing (RFC 6587): `LEN SP MSG`, or MSG LF as most senders use (not RELP's:
    RELP frames every message itself)."""
    format: Literal["rfc3164-origip", "rfc5424", "raw"] = "rfc3164-origip"
    """`rfc3164-origip`: PLURA's `<PRI>TIMESTAMP HOSTNAME TAG [origip=<sender>] MSG`;
    `rfc5424`: RFC 5424 with the sender in `[origin ip="..."]`; `raw`: the bytes received."""
    match: RouteMatch = msgspec.field(default_factory=lambda: RouteMatch())
    """Which messages go to this target (as for routes; empty: all)."""
    tls: ForwardTls = msgspec.field(default_factory=lambda: ForwardTls())
    max_spool_bytes: Annotated[int, msgspec.Meta(ge=64 * 1024)] = 1 << 30
    """Disk spool size bound: messages not yet confirmed delivered, in record bytes."""
    segment_bytes: Annotated[int, msgspec.Meta(ge=4096)] = 16 << 20
    on_full: Literal["block", "drop_oldest", "drop_newest"] = "block"
    """Spool full: `block` pauses TCP senders (UDP messages are dropped and counted),
    `drop_oldest` deletes the oldest segment, `drop_newest` refuses new messages; counted."""
    fsync: Literal["never", "interval", "always"] = "interval"
    """When spooled messages are fsynced: never (the kernel decides; survives a crash of
    plura-relay, not of the host), every `fsync_interval_s`, or after every received batch."""
    fsync_interval_s: PositiveFloat = 1.0
    confirm_after_s: NonNegativeFloat = 1.0
    """A message counts as delivered once the upstream's kernel acknowledged it and the
    connection stayed up this long; a connection lost before that sends it again."""
    connect_timeout_s: PositiveFloat = 10.0
    """For RELP also the time the upstream has to answer the `open`."""
    relp_window: int = 128
    """RELP: messages sent and not yet acknowledged at most (librelp's default window)."""
    relp_ack_timeout_s: PositiveFloat = 90.0
    """RELP: a message not acknowledged this long after it was sent drops the connection
    (reconnect, resend): omrelp's `timeout` default."""
    reconnect_initial_s: PositiveFloat = 0.5
    reconnect_max_s: PositiveFloat = 30.0
    stats_log_interval_s: NonNegativeFloat = 60.0
    """Log the target's counters this often when something changed (0: never)."""


class OriginConfig(Base, frozen=True, forbid_unknown_fields=True):
    trust_origip: bool = False
    """Honour PLURA's `[origip=<ip>]` relay stamp: file the message under that address, strip
    the stamp from msg, and register the child under it (with the relay as `via`)."""
    trusted_sources: list[str] = msgspec.field(default_factory=list)
    """CIDRs of the relays / NAT addresses whose stamps are honoured; others' stay text."""


class MetricsConfig(Base, frozen=True, forbid_unknown_fields=True):
    listen: str = "127.0.0.1:9514"
    """HTTP `HOST:PORT` for /metrics, /healthz and /readyz; "" turns it off."""
    scrape_listen: str = ""
    """A second HTTP `HOST:PORT` serving /metrics only, for Prometheus (e.g. `${HOST_IP}:9515`
    or `0.0.0.0:9515`); "" (default): none."""


class LogConfig(Base, frozen=True, forbid_unknown_fields=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class KubernetesConfig(Base, frozen=True, forbid_unknown_fields=True):
    """Pod identity: resolve each source IP to the pod of this node behind it (README)."""

    enabled: bool = False
    node_name: str = ""
    """This node's name; "" takes the NODE_NAME environment variable (the downward API)."""
    kubeconfig: str = ""
    """Path of a kubeconfig file; "" is the in-cluster service account."""
    deleted_pod_grace_s: NonNegativeFloat = 120.0
    """A deleted pod still resolves for this long (its late messages), unless a newer pod took
    its IP."""
    labels: list[str] = msgspec.field(default_factory=list)
    """Pod label keys recorded with each child (e.g. `app.kubernetes.io/name`)."""
    warning_interval_s: PositiveFloat = 60.0
    """While the API server is away, one WARNING per this interval."""


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
    kubernetes: KubernetesConfig = msgspec.field(default_factory=KubernetesConfig)
    route: list[Route] = msgspec.field(default_factory=list)
    """`[[route]]` sections, tried in order for every message."""
    forward: list[Forward] = msgspec.field(default_factory=list)
    """`[[forward]]` upstream targets, each fed beside the files through its own spool."""


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


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(text: str, key: str, environ: Mapping[str, str]) -> str:
    """`${NAME}` replaced by the environment's NAME (e.g. the downward API's status.hostIP in
    HOST_IP); an unset or empty one raises ConfigError naming `key`."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if not environ.get(name):
            raise ConfigError(f"{key}: ${{{name}}} is not set in the environment")
        return environ[name]

    return _ENV_REFERENCE.sub(value, text)


def _expand_listen(config: Config, where: str, environ: Mapping[str, str]) -> Config:
    """Expand `${VAR}` in the address keys; an address from the environment needs pod_cidr or
    allowed_sources, which then default to the pod CIDR."""
    listen, metrics = config.listen, config.metrics
    try:
        addresses = [expand_env(a, "listen.addresses", environ) for a in listen.addresses]
        allowed = [expand_env(c, "listen.allowed_sources", environ) for c in listen.allowed_sources]
        pod_cidr = expand_env(listen.pod_cidr, "listen.pod_cidr", environ)
        tls = [expand_env(a, "listen.tls.addresses", environ) for a in listen.tls.addresses]
        relp = {
            key: [expand_env(a, f"listen.relp.{key}", environ) for a in getattr(listen.relp, key)]
            for key in ("addresses", "tls_addresses")
        }
        metrics_listen = expand_env(metrics.listen, "metrics.listen", environ)
        scrape = expand_env(metrics.scrape_listen, "metrics.scrape_listen", environ)
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None
    pod_cidrs = [c.strip() for c in pod_cidr.split(",") if c.strip()]
    if not allowed and not pod_cidrs and any("${" in a for a in listen.addresses):
        raise ConfigError(
            f"{where}listen.pod_cidr: expected the pod network's CIDR (or listen.allowed_sources)"
            " when listen.addresses comes from the environment"
        )
    listen = msgspec.structs.replace(
        listen,
        addresses=addresses,
        allowed_sources=allowed or pod_cidrs,
        pod_cidr=pod_cidr,
        tls=msgspec.structs.replace(listen.tls, addresses=tls),
        relp=msgspec.structs.replace(listen.relp, **relp),
    )
    metrics = msgspec.structs.replace(metrics, listen=metrics_listen, scrape_listen=scrape)
    return msgspec.structs.replace(config, listen=listen, metrics=metrics)


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Defaults, then the TOML file, then `overrides` (dotted keys, e.g. `output.log_dir`);
    `${VAR}` in the address keys from `environ` (default: the process's environment)."""
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
    config = _expand_listen(config, where, os.environ if environ is None else environ)
    for address in config.listen.addresses:
        try:
            if not is_auto(address):
                parse_address(address)
        except ValueError as exc:
            raise ConfigError(
                f"{where}listen.addresses: expected HOST:PORT with an IP address, or auto[:PORT]"
                f" ({exc})"
            ) from exc
    delimiter = config.listen.extra_frame_delimiter
    if delimiter == 0x0A or 0x30 <= delimiter <= 0x39:
        raise ConfigError(
            f"{where}listen.extra_frame_delimiter: expected a byte other than LF and digits"
        )
    if config.origin.trust_origip and not config.origin.trusted_sources:
        raise ConfigError(f"{where}origin.trusted_sources: expected the relays' CIDRs")
    for cidr in [*config.listen.allowed_sources, *config.origin.trusted_sources]:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise ConfigError(f"{where}allowed_sources / trusted_sources: {exc}") from exc
    for key, address in (
        ("metrics.listen", config.metrics.listen),
        ("metrics.scrape_listen", config.metrics.scrape_listen),
    ):
        try:
            if address:
                parse_address(address, 9514)
        except ValueError as exc:
            raise ConfigError(
                f"{where}{key}: expected HOST:PORT with an IP address ({exc})"
            ) from exc
    _check_tls_listeners(config.listen.tls, where)
    _check_relp_listeners(config.listen, where)
    _check_forwards(config.forward, where)
    config = _check_kubernetes(config, where, os.environ if environ is None else environ)
    for index, route in enumerate(config.route):
        _check_route(route, f"{where}route[{index}]")
    _check_bounds(config, where)
    _check_usable(config, where)
    return config


def _check_kubernetes(config: Config, where: str, environ: Mapping[str, str]) -> Config:
    """With the watch on: the node's name (else NODE_NAME), a kubeconfig that exists, the
    client. In-cluster credentials are not checked here: without them the watch degrades (one
    WARNING per interval), as when the API is away."""
    kube = config.kubernetes
    if not kube.enabled:
        return config
    node_name = kube.node_name or environ.get("NODE_NAME", "")
    if not node_name:
        raise ConfigError(
            f"{where}kubernetes.node_name: expected this node's name (or the NODE_NAME"
            " environment variable, from the downward API)"
        )
    if kube.kubeconfig and not Path(kube.kubeconfig).is_file():
        raise ConfigError(f"{where}kubernetes.kubeconfig: {kube.kubeconfig} does not exist")
    if any(not key for key in kube.labels):
        raise ConfigError(f"{where}kubernetes.labels: expected label keys, got an empty one")
    if importlib.util.find_spec("kubernetes_asyncio") is None:
        raise ConfigError(
            f"{where}kubernetes.enabled: needs the kubernetes_asyncio package"
            " (pip install 'plura-relay[kubernetes]')"
        )
    resolved = msgspec.structs.replace(kube, node_name=node_name)
    return msgspec.structs.replace(config, kubernetes=resolved)


def _check_route(route: Route, where: str) -> None:
    for cidr in route.match.source_cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise ConfigError(f"{where}.match.source_cidrs: {exc}") from exc
    if route.action == "write" and not route.file:
        raise ConfigError(f'{where}.file: expected a file name (or action = "drop")')
    if route.action == "drop" and route.file:
        raise ConfigError(f"{where}.file: a drop route writes no file")
    if route.set_programname is not None and route.template != "ceelog":
        raise ConfigError(f'{where}.set_programname: only with template = "ceelog"')
    known = ", ".join(f"{{{name}}}" for name in ROUTE_FILE_PLACEHOLDERS)
    try:
        parts = list(Formatter().parse(route.file))
    except ValueError as exc:
        raise ConfigError(f"{where}.file: {exc} (a literal brace is written {{{{ or }}}})") from exc
    for _, field, spec, conversion in parts:
        if field is not None and (field not in ROUTE_FILE_PLACEHOLDERS or spec or conversion):
            raise ConfigError(
                f"{where}.file: unknown placeholder in {route.file!r}, expecting {known}"
            )


def _check_tls_listeners(tls: ListenTls, where: str) -> None:
    for address in tls.addresses:
        try:
            parse_address(address, 6514)
        except ValueError as exc:
            raise ConfigError(f"{where}listen.tls.addresses: expected HOST:PORT ({exc})") from exc
    if tls.addresses and not (tls.cert_file and tls.key_file):
        raise ConfigError(f"{where}listen.tls: cert_file and key_file are required")
    if tls.require_client_cert and not tls.client_ca_file:
        raise ConfigError(f"{where}listen.tls.require_client_cert: expected client_ca_file")


RELP_PORT = 2514


def _check_relp_listeners(listen: ListenConfig, where: str) -> None:
    relp = listen.relp
    for key in ("addresses", "tls_addresses"):
        for address in getattr(relp, key):
            try:
                parse_address(address, RELP_PORT)
            except ValueError as exc:
                raise ConfigError(
                    f"{where}listen.relp.{key}: expected HOST:PORT with an IP address ({exc})"
                ) from exc
    if relp.tls_addresses and not (listen.tls.cert_file and listen.tls.key_file):
        raise ConfigError(
            f"{where}listen.relp.tls_addresses: needs listen.tls.cert_file and listen.tls.key_file"
        )


def _check_forwards(forwards: list[Forward], where: str) -> None:
    names = [forward.name for forward in forwards]
    for index, forward in enumerate(forwards):
        if forward.name in names[:index]:
            raise ConfigError(f"{where}forward[{index}].name: {forward.name!r} is used twice")
        if not forward.host:
            raise ConfigError(f"{where}forward[{index}].host: expected an address or name")
        if bool(forward.tls.cert_file) != bool(forward.tls.key_file):
            raise ConfigError(f"{where}forward[{index}].tls: cert_file and key_file go together")
        if forward.match.msg_contains:
            raise ConfigError(f"{where}forward[{index}].match.msg_contains: routes only")
        for cidr in forward.match.source_cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ConfigError(f"{where}forward[{index}].match.source_cidrs: {exc}") from exc


# -- Bounds: every number has a lowest and a highest value, and a reason --------------------------
#
# A key whose schema type already bounds it on both sides (ports, modes, `workers`) needs no
# entry; every other int or float does (tests/test_config.py checks it). README's "Bounds" table
# is generated from this one: `python -m relay.config bounds`.


class Bound(NamedTuple):
    low: float
    high: float
    why: str
    off: bool = False
    """0 is allowed too, and means off / never."""


_KiB, _MiB, _GiB = 1 << 10, 1 << 20, 1 << 30
_DAY_S = 86400.0
_SPIN = "under it a timer fires so often that the server spins"
_GRACE = "a worker gets 30 s to stop before it is killed, as Kubernetes' default grace period"
_FDS = "each is a descriptor; the kernel's default per-process ceiling (nr_open) is 1,048,576"

BOUNDS: dict[str, Bound] = {
    # key (dotted; `forward[]` stands for every target): Bound(lowest, highest, why)
    "listen.rcvbuf_bytes": Bound(0, _GiB, "the kernel keeps it, doubled, in an int; 0 leaves the "
                                 "system's default"),
    "listen.drain_timeout_s": Bound(0.01, 20, _GRACE),
    "listen.udp_batch_wait_s": Bound(0.0001, 0.1, "below, the timer costs more than it saves; "
                                     "above, a burst may outgrow the receive buffer", off=True),
    "listen.rate_limit_per_source": Bound(0.1, 1e7, "below, a source is all but silenced; above, "
                                          "it is more than the server can receive", off=True),
    "listen.rate_limit_burst": Bound(1, 1e7, "messages a source may send at once above its rate"),
    "listen.max_connections": Bound(1, 1_000_000, _FDS),
    "listen.idle_timeout_s": Bound(0.2, 30 * _DAY_S, "below, senders pausing between messages are "
                                   "cut off (and the check runs a quarter of it)", off=True),
    "listen.relp.window": Bound(1, 100_000, "acks a session may wait for; librelp's default "
                                "window is 128"),
    "listen.tls.handshake_timeout_s": Bound(0.1, 300, "a handshake takes a few round trips"),
    "output.flush_interval_s": Bound(0.001, 10, f"{_SPIN}; above, lines wait in memory that long "
                                     "(lost if the process is killed)"),
    "output.max_open_files": Bound(1, 1_000_000, _FDS),
    "output.reopen_check_interval_s": Bound(0.01, 3600, f"one stat per open file each time: "
                                            f"{_SPIN}; above, a rotated file is written that long"),
    "hostname.dns_cache_ttl_s": Bound(1, 7 * _DAY_S, "a name changed in DNS is seen this late"),
    "children.save_interval_s": Bound(0.01, 60, f"each save rewrites and fsyncs the registry: "
                                      f"{_SPIN}; a crash loses at most this much"),
    "children.inactive_after_s": Bound(0.1, 365 * _DAY_S, "a year of silence is gone"),
    "children.retention_s": Bound(1, 3650 * _DAY_S, "ten years", off=True),
    "children.max_children": Bound(1, 1_000_000, "each has a file and a registry line"),
    "children.max_new_per_second": Bound(0.01, 1e6, "new files and registry entries per second"),
    "children.new_sources_burst": Bound(1, 1e6, "as max_children"),
    "children.hook_backoff_initial_s": Bound(0.01, 3600, _SPIN),
    "children.hook_backoff_max_s": Bound(0.01, _DAY_S, "a child is announced at least daily"),
    "children.hook_timeout_s": Bound(0.1, 30, f"a clean stop waits this long for hooks: {_GRACE}"),
    "kubernetes.deleted_pod_grace_s": Bound(
        0, 86_400, "late messages of a deleted pod; a day is far past any sender's retry"
    ),
    "kubernetes.warning_interval_s": Bound(1, 3_600, "one WARNING per interval, API away"),
    "forward[].port": Bound(1, 65535, "port 0 cannot be connected to"),
    "forward[].max_spool_bytes": Bound(64 * _KiB, 1 << 40, "a segment at least; 1 TiB of backlog"),
    "forward[].segment_bytes": Bound(4 * _KiB, _GiB, "a page; a consumed segment is deleted "
                                     "whole, so its size is disk held after delivery"),
    "forward[].fsync_interval_s": Bound(0.01, 60, _SPIN),
    "forward[].confirm_after_s": Bound(0, 60, "the spool holds this much traffic on disk"),
    "forward[].connect_timeout_s": Bound(0.1, 300, "a connection takes a few round trips"),
    "forward[].relp_window": Bound(1, 100_000, "messages in flight; each may be sent again "
                                   "after a reconnect, and is held in memory meanwhile"),
    "forward[].relp_ack_timeout_s": Bound(0.1, 3600, "an answer takes a round trip; above, a "
                                          "stuck upstream holds every message that long"),
    "forward[].reconnect_initial_s": Bound(0.01, 3600, _SPIN),
    "forward[].reconnect_max_s": Bound(0.01, _DAY_S, "an upstream back is found within this"),
    "forward[].stats_log_interval_s": Bound(1, _DAY_S, "a log line per target each time",
                                            off=True),
}  # fmt: skip

# (lower key, higher key): the first may not exceed the second
ORDERED: list[tuple[str, str]] = [
    ("children.hook_backoff_initial_s", "children.hook_backoff_max_s"),
    ("forward[].reconnect_initial_s", "forward[].reconnect_max_s"),
]


def _values(node: Any, key: str, shown: str = "") -> list[tuple[str, Any]]:
    """(`forward[1].port`, 514) for each value the dotted `key` names (`[]`: every item)."""
    name, _, rest = key.partition(".")
    many = name.endswith("[]")
    value = getattr(node, name.removesuffix("[]"))
    here = f"{shown}.{name.removesuffix('[]')}" if shown else name.removesuffix("[]")
    items = [(f"{here}[{i}]", item) for i, item in enumerate(value)] if many else [(here, value)]
    if not rest:
        return items
    return [found for path, item in items for found in _values(item, rest, path)]


def _number(value: float) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", _GiB), ("MiB", _MiB), ("KiB", _KiB)):
        if value >= size and value % size == 0:
            return f"{value / size:g} {unit}"
    return f"{value:,g}" if value < 1e6 else f"{value:,.0f}"


def _check_bounds(config: Config, where: str) -> None:
    for key, bound in BOUNDS.items():
        for shown, value in _values(config, key):
            if bound.off and value == 0:
                continue
            if not bound.low <= value <= bound.high:  # also false for NaN
                also = " (or 0: off)" if bound.off else ""
                raise ConfigError(
                    f"{where}{shown}: expected {_number(bound.low)} to {_number(bound.high)}"
                    f"{also}, got {value!r}: {bound.why}"
                )
    for low_key, high_key in ORDERED:
        for (low_at, low), (high_at, high) in zip(
            _values(config, low_key), _values(config, high_key), strict=True
        ):
            if low > high:
                raise ConfigError(f"{where}{low_at}: expected at most {high_at} ({high!r})")


def bounds_table() -> str:
    """README's "Bounds" table, from BOUNDS."""
    rows = ["| key | lowest | highest | why |", "|---|---|---|---|"]
    for key, bound in BOUNDS.items():
        low = _number(bound.low) + (" (or 0: off)" if bound.off else "")
        rows.append(f"| `{key}` | {low} | {_number(bound.high)} | {bound.why} |")
    return "\n".join(rows) + "\n"


# -- Rules a config must keep to be of use (what the schema cannot say) ---------------------------

_ANY_V4 = ("", "0.0.0.0")


def check_hook_url(url: str) -> None:
    """Raises ValueError unless `url` is an http:// or https:// URL with a host."""
    target = urlsplit(url)
    try:
        port_ok = target.port is None or target.port > 0
    except ValueError:
        port_ok = False
    if target.scheme not in ("http", "https") or not target.hostname or not port_ok:
        raise ValueError(f"expecting an http:// or https:// registration hook URL, got {url!r}")


def _check_usable(config: Config, where: str) -> None:
    for rule in (_check_listeners, _check_ports, _check_children, _check_paths):
        problem = rule(config)
        if problem is not None:
            raise ConfigError(f"{where}{problem}")


def _check_listeners(config: Config) -> str | None:
    listen = config.listen
    if listen.addresses and not (listen.udp or listen.tcp):
        return ("listen.udp, listen.tcp: expected at least one of them true, as listen.addresses "
                "is set (for TLS only: listen.addresses = [])")  # fmt: skip
    if not (
        listen.addresses or listen.tls.addresses or listen.relp.addresses
        or listen.relp.tls_addresses
    ):  # fmt: skip
        return ("listen.addresses: expected at least one HOST:PORT (or listen.tls.addresses, "
                "listen.relp.addresses)")  # fmt: skip
    if config.metrics.listen:
        try:
            parse_address(config.metrics.listen, 9514)
        except ValueError as exc:
            return f'metrics.listen: expected HOST:PORT with an IP address, or "" for off ({exc})'
    return None


def _check_ports(config: Config) -> str | None:
    """One port, one listener: a second bind to a port already taken fails at start."""
    listen = config.listen
    kinds = [kind for kind, on in (("tcp", listen.tcp), ("udp", listen.udp)) if on]
    wanted = [("listen.addresses", a, kind, 514) for a in listen.addresses if not is_auto(a)
              for kind in kinds]  # fmt: skip
    wanted += [("listen.tls.addresses", a, "tcp", 6514) for a in listen.tls.addresses]
    for key in ("addresses", "tls_addresses"):
        wanted += [(f"listen.relp.{key}", a, "tcp", RELP_PORT) for a in getattr(listen.relp, key)]
    if config.metrics.listen:
        wanted.append(("metrics.listen", config.metrics.listen, "tcp", 9514))
    seen: list[tuple[str, str, str, int, str]] = []
    for key, address, kind, default_port in wanted:
        host, port = parse_address(address, default_port)
        for other_key, other, other_host, other_port, other_kind in seen:
            if port and port == other_port and kind == other_kind and _overlap(host, other_host):
                return f"{key}: {address} ({kind}) takes the port of {other_key} {other}"
        seen.append((key, address, host, port, kind))
    return None


def _overlap(a: str, b: str) -> bool:
    """Would binding both addresses on one port clash?"""
    if a == b or "::" in (a, b):  # [::] is dual-stack: it takes the port on every address
        return True
    if a in _ANY_V4:
        return ":" not in b
    return b in _ANY_V4 and ":" not in a


def _check_children(config: Config) -> str | None:
    children = config.children
    if children.hook_url:
        try:
            check_hook_url(children.hook_url)
        except ValueError as exc:
            return f"children.hook_url: {exc}"
    if children.hook_command and not children.hook_command[0]:
        return "children.hook_command: expected a program as the first item"
    return None


def _check_paths(config: Config) -> str | None:
    out = config.output
    for key, value in (("state_dir", config.state_dir), ("output.log_dir", out.log_dir)):
        if not value:
            return f"{key}: expected a directory"
    if out.dir_mode & 0o700 != 0o700:
        return f"output.dir_mode: expected the owner's rwx bits (0o700), got {oct(out.dir_mode)}"
    if not out.file_mode & 0o200:
        return "output.file_mode: expected the owner's write bit (0o200): files are reopened"
    log_dir = Path(out.log_dir)
    for index, route in enumerate(config.route):
        if route.action == "drop":
            continue  # writes no file
        target = log_dir / route.file
        if (not route.file or route.file.endswith("/") or target.name in ("", ".", "..")
                or os.path.normpath(target) == os.path.normpath(log_dir)):  # fmt: skip
            return f"route[{index}].file: expected a file name, got {route.file!r}"
    return None


if __name__ == "__main__":  # `python -m relay.config bounds`: README's "Bounds" table
    import sys

    if sys.argv[1:] == ["bounds"]:
        sys.stdout.write(bounds_table())
