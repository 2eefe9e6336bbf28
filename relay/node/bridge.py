"""The node's pod-network address, for `listen.addresses = ["auto"]`.

flannel's bridge `cni0` carries the node's address on the pod network (10.244.N.1), which is where
pods' rsyslog send (`*.info @10.244.N.1`). flannel creates the bridge only when the first pod
starts, so the address may not exist yet: its `subnet.env` tells it in advance (and the listener
binds with IP_FREEBIND), or we wait for the bridge.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from pathlib import Path

USUAL_BRIDGES = ("cni0", "docker0", "cbr0")
_SIOCGIFADDR = 0x8915
_SIOCGIFNETMASK = 0x891B


def interface_ipv4(name: str) -> ipaddress.IPv4Interface | None:
    """The IPv4 address/prefix of interface `name`, or None if it has none (or does not exist)."""
    request = struct.pack("256s", name.encode()[:15])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            address = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)[20:24]
            netmask = fcntl.ioctl(sock.fileno(), _SIOCGIFNETMASK, request)[20:24]
        except OSError:
            return None
    return ipaddress.IPv4Interface(f"{socket.inet_ntoa(address)}/{socket.inet_ntoa(netmask)}")


def interface_ipv6(name: str, proc: Path = Path("/proc/net/if_inet6")) -> list[str]:
    """Global-scope IPv6 addresses of `name` (link-local ones need a scope and are skipped)."""
    addresses = []
    try:
        lines = proc.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        if len(fields) == 6 and fields[5] == name and fields[3] == "00":  # scope global
            addresses.append(str(ipaddress.IPv6Address(bytes.fromhex(fields[0]))))
    return addresses


def flannel_address(path: str) -> ipaddress.IPv4Interface | None:
    """FLANNEL_SUBNET=10.244.2.1/24 in flannel's subnet.env: the bridge's address to be."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "FLANNEL_SUBNET":
            try:
                return ipaddress.IPv4Interface(value.strip())
            except ValueError:
                return None
    return None


class BridgeAddress:
    """Where `auto` binds: (addresses, interface name, bound before the interface exists)."""

    def __init__(self, addresses: list[str], network: str, source: str, freebind: bool) -> None:
        self.addresses = addresses
        self.network = network  # the pod network, e.g. "10.244.2.0/24" ("" if unknown)
        self.source = source
        self.freebind = freebind


def find_bridge_address(interface: str, flannel_env: str) -> BridgeAddress | None:
    """The named interface's addresses, else the usual bridges', else flannel's subnet."""
    for name in (interface,) if interface else USUAL_BRIDGES:
        ipv4 = interface_ipv4(name)
        if ipv4 is not None:
            return BridgeAddress(
                [str(ipv4.ip), *interface_ipv6(name)], str(ipv4.network), name, freebind=False
            )
    flannel = flannel_address(flannel_env)
    if flannel is not None and (not interface or interface == "cni0"):
        return BridgeAddress([str(flannel.ip)], str(flannel.network), flannel_env, freebind=True)
    return None
