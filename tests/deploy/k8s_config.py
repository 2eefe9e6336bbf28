"""The kustomize directories' copies of conf/plura-relay.toml (kustomize reads no file outside
a kustomization's directory): the base's with [metrics] scrape_listen on the node's address,
host-ip's listening on ${HOST_IP}, relay's with a [[forward]] target.

`python -m tests.deploy.k8s_config` writes them; `--check` exits 1 if one differs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "conf" / "plura-relay.toml"
K8S = ROOT / "conf" / "k8s"
NAME = "plura-relay.toml"

BASE = [('scrape_listen = ""', 'scrape_listen = "${HOST_IP}:9515"')]
HOST_IP = [
    *BASE,
    ('addresses = ["auto:514"]', 'addresses = ["${HOST_IP}:514"]'),
    ('interface = "cni0"', 'interface = ""'),
    ('pod_cidr = ""', 'pod_cidr = "${POD_CIDR}"'),
]
FORWARD = """
# Relay mode (conf/relay.toml explains every key): every message also goes upstream, through a
# disk spool in state_dir (the state-dir hostPath) that is bounded by max_spool_bytes.
[[forward]]
name = "plura-collector"
host = "collector.example.net"
port = 6514
protocol = "tls"
framing = "octet-counting"
format = "rfc3164-origip"
max_spool_bytes = 1073741824
segment_bytes = 16777216
on_full = "block"
[forward.tls]
ca_file = "/etc/plura-relay/tls/ca.pem"
"""

# pod identity: the watch on (the node's name from NODE_NAME, the in-cluster service account)
POD_IDENTITY = [
    *BASE,
    ("Off: children are IPs.\nenabled = false", "Off: children are IPs.\nenabled = true"),
]

COPIES: dict[str, tuple[list[tuple[str, str]], str]] = {
    "base": (BASE, ""),
    "overlays/pod-identity": (POD_IDENTITY, ""),
    "overlays/host-ip": (HOST_IP, ""),
    "overlays/relay": (BASE, FORWARD),
}


def render(directory: str, source: str | None = None) -> str:
    """The TOML `directory` (relative to conf/k8s) holds, from conf/plura-relay.toml."""
    text = SOURCE.read_text() if source is None else source
    replacements, appended = COPIES[directory]
    for old, new in replacements:
        if text.count(old) != 1:
            raise ValueError(f"{SOURCE}: expecting {old!r} once, for {directory}")
        text = text.replace(old, new)
    return text + appended


def stale() -> list[Path]:
    return [K8S / d / NAME for d in COPIES if (K8S / d / NAME).read_text() != render(d)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.deploy.k8s_config", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if a copy differs")
    args = parser.parse_args(argv)
    if args.check:
        for path in stale():
            print(f"{path}: differs from {SOURCE}")
        return 1 if stale() else 0
    for directory in COPIES:
        (K8S / directory / NAME).write_text(render(directory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
