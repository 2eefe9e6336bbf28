"""The pod side: rsyslog snippets that send a pod's syslog to plura-relay on its node.

The canonical text of `rsyslog.d/pod-udp.conf`, `pod-tcp.conf` and `pod-relp.conf` lives here
(the repository's `rsyslog.d/` is outside the package); a test checks that those files are
exactly `pod_snippet(NODE_IP_PLACEHOLDER)`, `pod_snippet(NODE_IP_PLACEHOLDER, tcp=True)` and
`pod_snippet(NODE_IP_PLACEHOLDER, relp=True)`.
"""

from __future__ import annotations

import ipaddress
import re

NODE_IP_PLACEHOLDER = "NODE_IP"
"""What the files in rsyslog.d/ have where the node's address goes."""
DEFAULT_PORT = 514
RELP_PORT = 2514  # plura-relay's listen.relp, as imrelp's usual port

_HEADER = """\
# PLURA: send this pod's syslog to plura-relay on its node, {how}.
# Drop-in for the pod's /etc/rsyslog.d/ (see rsyslog.d/README.md in plura-relay). The target is
# the node's address on the pod network: with flannel the cni0 bridge, the pod's default gateway.
#
# A pod has no kernel log, so only imuxsock (/dev/log) is loaded and imklog is not. rsyslog
# refuses a module loaded twice (error 2221): comment out the module(load=...) lines of the
# image's /etc/rsyslog.conf, e.g.
#   sed -i -E '/^[[:space:]]*(module\\(load="|\\$ModLoad[[:space:]]+)im(uxsock|klog)/s/^/#/' \\
#       /etc/rsyslog.conf
module(load="imuxsock")

"""

POD_UDP_TEMPLATE = (
    _HEADER.format(how="over UDP")
    + "# info and more important, every facility, one datagram each\n"
    + "*.info @{target}:{port}\n"
)
"""`str.format` fields: `target` (IPv6 in brackets) and `port`."""

POD_TCP_TEMPLATE = (
    _HEADER.format(how="over TCP (RFC 6587 octet-counted frames)")
    + """\
# Octet counting keeps messages containing LF whole. While plura-relay is unreachable, messages
# wait in a disk-assisted queue: queue.filename is relative to rsyslog's workDirectory (Debian's
# rsyslog.conf sets /var/spool/rsyslog), at most queue.maxDiskSpace on disk, saved at shutdown;
# resumeRetryCount -1 retries forever instead of discarding.
*.info action(
    type="omfwd" target="{target}" port="{port}" protocol="tcp"
    TCP_Framing="octet-counted"
    queue.type="LinkedList" queue.filename="plura-relay-fwd"
    queue.maxDiskSpace="100m" queue.saveOnShutdown="on"
    action.resumeRetryCount="-1"
)
"""
)
"""`str.format` fields: `target` (a bare address, IPv6 without brackets) and `port`."""

_RELP_NOTE = """\
# RELP: plura-relay acknowledges each message only once it is written to its file (and to its
# forward spools); until then omrelp keeps it and sends it again after a reconnect, so a restart
# or a SIGKILL of plura-relay loses nothing (a few messages may arrive twice). Needs rsyslog's
# omrelp (Debian: rsyslog-relp). While plura-relay is unreachable, messages wait in a
# disk-assisted queue: queue.filename is relative to rsyslog's workDirectory (Debian's
# rsyslog.conf sets /var/spool/rsyslog), at most queue.maxDiskSpace on disk, saved at shutdown;
# resumeRetryCount -1 retries forever instead of discarding.
module(load="omrelp")
"""
_RELP_SETTINGS = (
    '\n    queue.type="LinkedList" queue.filename="plura-relay-relp"'
    '\n    queue.maxDiskSpace="100m" queue.saveOnShutdown="on"'
    '\n    action.resumeRetryCount="-1"'
)

POD_RELP_TEMPLATE = (
    _HEADER.format(how="over RELP (every message acknowledged)")
    + _RELP_NOTE
    + '*.info action(\n    type="omrelp" target="{target}" port="{port}"'
    + _RELP_SETTINGS
    + "\n)\n"
)
"""`str.format` fields: `target` (a bare address, IPv6 without brackets) and `port`."""

POD_ENV_TEMPLATE = (
    _HEADER.format(how="{how}, to the node's own address").replace(
        "The target is\n# the node's address on the pod network: with flannel the cni0 bridge, "
        "the pod's default gateway.",
        "The target is\n# the node's address, from the pod's environment: give the pod "
        "`env: [{{name: {env}, valueFrom:\n# {{fieldRef: {{fieldPath: status.hostIP}}}}}}]`"
        " (any CNI; plura-relay listens on ${{{env}}} too).",
    )
    + """\
# rsyslog reads the variable when it starts (a backtick string: only `echo $VAR` is allowed).
*.info action(
    type="omfwd" target=`echo ${env}` port="{port}" protocol="{protocol}"{tcp_settings}
)
"""
)
"""`str.format` fields: `how`, `env`, `port`, `protocol`, `tcp_settings`."""

_TCP_SETTINGS = (
    '\n    TCP_Framing="octet-counted"'
    '\n    queue.type="LinkedList" queue.filename="plura-relay-fwd"'
    '\n    queue.maxDiskSpace="100m" queue.saveOnShutdown="on"'
    '\n    action.resumeRetryCount="-1"'
)

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _is_host_name(text: str) -> bool:
    labels = text.removesuffix(".").split(".")
    return len(text) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


def _check_node(node_ip: str) -> bool:
    """Validate `node_ip`; True if it is an IPv6 address (bracketed in `@[addr]:port`)."""
    if node_ip == NODE_IP_PLACEHOLDER:
        return False
    try:
        return ipaddress.ip_address(node_ip).version == 6
    except ValueError:
        pass
    if _is_host_name(node_ip):
        return False  # rsyslog resolves names; an address spares the pod a DNS lookup
    raise ValueError(f"expecting an IP address or host name for the node, got {node_ip!r}")


def pod_snippet(
    node_ip: str, *, tcp: bool = False, port: int | None = None, relp: bool = False
) -> str:
    """The pod's rsyslog drop-in that forwards `*.info` to `node_ip`:`port` (UDP, or `tcp`,
    or `relp`; the port defaults to 514, for RELP to 2514).

    `node_ip` is an IPv4/IPv6 address, a host name, or `NODE_IP_PLACEHOLDER` (which renders the
    files in rsyslog.d/). Raises ValueError for anything else or a port outside 1..65535.
    """
    is_v6 = _check_node(node_ip)
    port = _port(port, relp)
    if relp:
        return POD_RELP_TEMPLATE.format(target=node_ip, port=port)
    if tcp:
        return POD_TCP_TEMPLATE.format(target=node_ip, port=port)
    target = f"[{node_ip}]" if is_v6 else node_ip
    return POD_UDP_TEMPLATE.format(target=target, port=port)


def _port(port: int | None, relp: bool) -> int:
    if port is None:
        return RELP_PORT if relp else DEFAULT_PORT
    if not 1 <= port <= 65535:
        raise ValueError(f"expecting a port in 1..65535, got {port}")
    return port


def pod_snippet_from_env(
    env: str, *, tcp: bool = False, port: int | None = None, relp: bool = False
) -> str:
    """The drop-in for a node address the pod gets from the downward API in variable `env`
    (plura-relay's `listen.addresses = ["${HOST_IP}:514"]` mode, for any CNI)."""
    if not _ENV_NAME.fullmatch(env):
        raise ValueError(f"expecting an environment variable name, got {env!r}")
    port = _port(port, relp)
    if relp:
        how = "over RELP (every message acknowledged)"
        text = POD_ENV_TEMPLATE.format(
            how=how, env=env, port=port, protocol="relp", tcp_settings=_RELP_SETTINGS
        )
        return (
            text.replace('type="omfwd"', 'type="omrelp"')
            .replace(' protocol="relp"', "")
            .replace("# rsyslog reads the variable", _RELP_NOTE + "# rsyslog reads the variable")
        )
    how = "over TCP (RFC 6587 octet-counted frames)" if tcp else "over UDP"
    return POD_ENV_TEMPLATE.format(
        how=how, env=env, port=port, protocol="tcp" if tcp else "udp",
        tcp_settings=_TCP_SETTINGS if tcp else "",
    )  # fmt: skip
