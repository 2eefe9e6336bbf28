"""The DaemonSet's `checksum/config` annotation: the sha256 of the ConfigMap's TOML.

`python -m tests.deploy.checksum` rewrites the annotation in conf/k8s/plura-relay-daemonset.yaml
(only that line, so comments and layout stay); `--check` exits 1 if it is stale.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path
from typing import Any

import yaml

DAEMONSET_YAML = Path(__file__).resolve().parents[2] / "conf" / "k8s" / "plura-relay-daemonset.yaml"
CONFIG_KEY = "plura-relay.toml"
ANNOTATION = "checksum/config"
_ANNOTATION_LINE = re.compile(r'^([ \t]*checksum/config:[ \t]*)"?[0-9a-f]*"?[ \t]*$', re.MULTILINE)


def documents(path: Path = DAEMONSET_YAML) -> dict[str, dict[str, Any]]:
    """The manifest's documents by kind (one of each)."""
    return {doc["kind"]: doc for doc in yaml.safe_load_all(path.read_text()) if doc}


def config_toml(path: Path = DAEMONSET_YAML) -> str:
    return str(documents(path)["ConfigMap"]["data"][CONFIG_KEY])


def expected_checksum(path: Path = DAEMONSET_YAML) -> str:
    return hashlib.sha256(config_toml(path).encode()).hexdigest()


def current_checksum(path: Path = DAEMONSET_YAML) -> str:
    annotations = documents(path)["DaemonSet"]["spec"]["template"]["metadata"]["annotations"]
    return str(annotations[ANNOTATION])


def update(path: Path = DAEMONSET_YAML) -> bool:
    """Rewrite the annotation if stale; True if the file changed."""
    text = path.read_text()
    new, count = _ANNOTATION_LINE.subn(rf'\g<1>"{expected_checksum(path)}"', text)
    if count != 1:
        raise ValueError(f"{path}: expecting one {ANNOTATION} annotation line, found {count}")
    if new == text:
        return False
    path.write_text(new)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.deploy.checksum", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the annotation is stale")
    parser.add_argument("path", nargs="?", type=Path, default=DAEMONSET_YAML)
    args = parser.parse_args(argv)
    if args.check:
        stale = current_checksum(args.path) != expected_checksum(args.path)
        print(f"{args.path}: {ANNOTATION} is {'stale' if stale else 'current'}")
        return 1 if stale else 0
    changed = update(args.path)
    print(f"{args.path}: {ANNOTATION} {'updated' if changed else 'already current'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
