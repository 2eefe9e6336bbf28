"""Route file names with `{namespace}`, `{pod}`, `{workload}` (beside `{ip}`): every pod value
is checked as a Kubernetes name before it touches a path."""

from __future__ import annotations

import pytest

from relay.kube.index import Pod
from relay.output.routes import expand_file_name


def pod(namespace: str = "shop", name: str = "web-1", workload: str = "web") -> Pod:
    return Pod("u", namespace, name, "n", "Deployment", workload, [], {})


@pytest.mark.parametrize(
    ("template", "peer", "found", "expected"),
    [
        ("pods/{namespace}/{pod}.log", "10.0.0.1", pod(), "pods/shop/web-1.log"),
        ("{workload}-{ip}.log", "10.0.0.1", pod(), "web-10.0.0.1.log"),
        ("{ip}.log", "fd00::1", None, "fd00::1.log"),
        ("pods/{namespace}/{pod}.log", "10.0.0.1", None, "pods/unknown/unknown.log"),
        ("{pod}.log", "10.0.0.1", pod(name="../../etc/passwd"), "unknown.log"),
        ("{pod}.log", "10.0.0.1", pod(name="a/b"), "unknown.log"),
        ("{pod}.log", "10.0.0.1", pod(name="a..b"), "unknown.log"),
        ("{pod}.log", "10.0.0.1", pod(name="Upper"), "unknown.log"),
        ("{pod}.log", "10.0.0.1", pod(name=""), "unknown.log"),
        ("{pod}.log", "10.0.0.1", pod(name="-x"), "unknown.log"),
        ("{pod}.log", "10.0.0.1", pod(name="a\nb"), "unknown.log"),
        ("{namespace}.log", "10.0.0.1", pod(namespace="kube-system"), "kube-system.log"),
        ("{pod}.log", "10.0.0.1", pod(name="db-0.db.local"), "db-0.db.local.log"),
        ("{{literal}}-{pod}.log", "10.0.0.1", pod(), "{literal}-web-1.log"),
    ],
)
def test_expand_file_name(template: str, peer: str, found: Pod | None, expected: str) -> None:
    assert expand_file_name(template, peer, found) == expected
