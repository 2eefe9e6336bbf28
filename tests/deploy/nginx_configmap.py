"""conf/k8s/nginx-example.yaml's ConfigMap: copies of conf/nginx/'s files, kept in step.

`python -m tests.deploy.nginx_configmap` rewrites the ConfigMap's data from conf/nginx/ (the
rest of the file is left as it is); `--check` exits 1 if it differs.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_YAML = ROOT / "conf" / "k8s" / "nginx-example.yaml"
NGINX_CONF = ROOT / "conf" / "nginx"
FILES = {
    "plura.conf": "plura.conf",
    "plura-server.conf": "plura-server.example.conf",
    "render.sh": "render.sh",
}
"""ConfigMap key -> file in conf/nginx/."""


def expected_data() -> dict[str, str]:
    return {key: (NGINX_CONF / name).read_text() for key, name in FILES.items()}


def render_data() -> str:
    """The ConfigMap's `data:` section as YAML block scalars."""
    blocks = "".join(
        f"  {key}: |\n" + textwrap.indent(text, "    ", lambda line: line.strip() != "")
        for key, text in expected_data().items()
    )
    return "data:\n" + blocks


def synced(text: str) -> str:
    """`text` (the whole YAML file) with the first document's data section regenerated."""
    first, sep, rest = text.partition("\n---\n")
    head, data, _ = first.partition("\ndata:\n")
    if not (sep and data):
        raise ValueError(f"{EXAMPLE_YAML}: expecting the ConfigMap with a data: section first")
    return head + "\n" + render_data().rstrip("\n") + sep + rest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.deploy.nginx_configmap")
    parser.add_argument("--check", action="store_true", help="exit 1 if the copies differ")
    args = parser.parse_args(argv)
    text = EXAMPLE_YAML.read_text()
    new = synced(text)
    if args.check:
        print(f"{EXAMPLE_YAML}: ConfigMap {'differs' if new != text else 'is current'}")
        return 1 if new != text else 0
    if new != text:
        EXAMPLE_YAML.write_text(new)
    print(f"{EXAMPLE_YAML}: ConfigMap {'updated' if new != text else 'already current'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
