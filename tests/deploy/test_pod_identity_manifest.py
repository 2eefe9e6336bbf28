"""conf/k8s/pod-identity.yaml: the DaemonSet with read access to its node's pods, and no more."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from relay import config as relay_config
from tests.deploy import checksum

K8S = Path(__file__).resolve().parents[2] / "conf" / "k8s"
POD_IDENTITY = K8S / "pod-identity.yaml"


def docs() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all(POD_IDENTITY.read_text()) if d}


def test_rbac_is_get_list_watch_on_pods_only() -> None:
    d = docs()
    assert d["ClusterRole"]["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    ]
    binding = d["ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == d["ClusterRole"]["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "plura-relay",
                                    "namespace": "plura"}]  # fmt: skip
    pod = d["DaemonSet"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == d["ServiceAccount"]["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is True
    [container] = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


def test_the_rest_is_the_plain_daemonset() -> None:
    plain = checksum.documents()["DaemonSet"]["spec"]["template"]["spec"]
    pod = dict(docs()["DaemonSet"]["spec"]["template"]["spec"])
    pod.pop("serviceAccountName")
    pod["automountServiceAccountToken"] = False
    pod["containers"] = [dict(c) for c in pod["containers"]]
    pod["containers"][0]["env"] = [
        e for e in pod["containers"][0]["env"] if e["name"] != "NODE_NAME"
    ]
    assert pod == plain


def test_checksum_annotation_is_current() -> None:
    assert checksum.current_checksum(POD_IDENTITY) == checksum.expected_checksum(POD_IDENTITY), (
        "run python -m tests.deploy.checksum conf/k8s/pod-identity.yaml"
    )


def test_config_enables_the_watch_and_checks_in_a_pod(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "plura-relay.toml"
    toml.write_text(checksum.config_toml(POD_IDENTITY))
    token = tmp_path / "token"
    token.write_text("t")
    monkeypatch.setattr(relay_config, "SERVICE_ACCOUNT_TOKEN", str(token))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("NODE_NAME", "worker-1")
    loaded = relay_config.load_config(toml)
    assert loaded.kubernetes.enabled and loaded.kubernetes.node_name == "worker-1"
    assert loaded.kubernetes.kubeconfig == ""  # in-cluster
