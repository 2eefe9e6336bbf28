"""conf/k8s/: every kustomize overlay renders and validates against Kubernetes 1.26 and the newest
schema kubernetes-validate has (strict), says what it promises, and carries what it copies up
to date.

- `kubectl kustomize` renders base + each overlay; every document passes strict validation
  (unknown fields rejected); the Prometheus Operator's kinds only come with `monitoring`;
- the ConfigMap is generated (name with a content hash: a config change rolls the pods) from
  the kustomization's copy of conf/plura-relay.toml, which `relay.config.load_config` loads;
- the DaemonSet has the settings the deployment relies on (host network, capabilities, probes,
  surge without hostPort, priority...), each overlay its own (host IP, RBAC, forward target);
- the nginx example's ConfigMap holds conf/nginx/'s files, and its initContainer's render.sh,
  run here, writes a plura.conf that sends to the pod's default gateway and that `nginx -t` accepts.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from relay.config import load_config
from tests.deploy.conftest import K8S, NGINX_CONF, missing, nginx_command, write_nginx_conf

try:
    import yaml

    from tests.deploy import k8s_config, nginx_configmap
except ImportError:  # PyYAML comes with kubernetes-validate
    missing("PyYAML", "pip install kubernetes-validate")

NGINX_YAML = K8S / "nginx-example.yaml"
OVERLAYS = ["flannel", "host-ip", "pod-identity", "relay", "monitoring"]
OLDEST_VERSION = "1.26"
CRD_KINDS = {"PodMonitor", "PrometheusRule"}  # monitoring.coreos.com/v1: no schema in the package
ENV = {"HOST_IP": "192.0.2.7", "POD_CIDR": "10.244.0.0/16", "NODE_NAME": "worker-1"}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in docs}


def kustomize_command() -> list[str]:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    missing("kubectl (kustomize)", "apt-get install kubectl, or install kustomize v5")


@functools.cache
def rendered(overlay: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [*kustomize_command(), str(K8S / "overlays" / overlay)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def versions(kubernetes_validate: ModuleType) -> list[str]:
    newest = ".".join(kubernetes_validate.latest_version().split(".")[:2])
    return [OLDEST_VERSION, newest]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_strictly(kubernetes_validate: ModuleType, overlay: str) -> None:
    checked = 0
    for version in versions(kubernetes_validate):
        for doc in rendered(overlay):
            if doc["kind"] in CRD_KINDS:
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(
                    f"{overlay} {doc['kind']} ({version}): {exc.message} at {list(exc.path)}"
                )
            checked += 1
    assert checked >= 6


def test_nginx_example_validates_strictly(kubernetes_validate: ModuleType) -> None:
    docs = documents(NGINX_YAML)
    assert [doc["kind"] for doc in docs] == ["ConfigMap", "Deployment", "Service"]
    for version in versions(kubernetes_validate):
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"nginx-example {doc['kind']} ({version}): {exc.message}")


def test_newest_schema_is_newer_than_oldest(kubernetes_validate: ModuleType) -> None:
    oldest, newest = versions(kubernetes_validate)
    assert tuple(map(int, newest.split("."))) > tuple(map(int, oldest.split(".")))


KINDS = {
    "flannel": ["Namespace", "ConfigMap", "DaemonSet"],
    "host-ip": ["Namespace", "ConfigMap", "DaemonSet"],
    "relay": ["Namespace", "ConfigMap", "DaemonSet"],
    "pod-identity": ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                     "ConfigMap", "DaemonSet"],
    "monitoring": ["Namespace", "ConfigMap", "DaemonSet", "PodMonitor", "PrometheusRule"],
}  # fmt: skip


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_kinds(overlay: str) -> None:
    assert [doc["kind"] for doc in rendered(overlay)] == KINDS[overlay]


def test_strict_validation_has_teeth(kubernetes_validate: ModuleType) -> None:
    doc = by_kind(rendered("flannel"))["DaemonSet"]
    doc["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFs"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFs"):
        kubernetes_validate.validate(doc, OLDEST_VERSION, strict=True)


# --------------------------------------------------------------------------- the config


def test_config_copies_are_current() -> None:
    assert not k8s_config.stale(), "run python -m tests.deploy.k8s_config"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_is_generated_and_mounted(overlay: str, tmp_path: Path) -> None:
    """The ConfigMap's name carries a hash of its content, the pod mounts that name, and the
    TOML loads with relay.config (with the pod's environment)."""
    docs = by_kind(rendered(overlay))
    config_map = docs["ConfigMap"]
    name = config_map["metadata"]["name"]
    assert name.startswith("plura-relay-config-") and len(name) > len("plura-relay-config-")
    volumes = docs["DaemonSet"]["spec"]["template"]["spec"]["volumes"]
    assert next(v for v in volumes if v["name"] == "config")["configMap"] == {"name": name}
    path = tmp_path / "plura-relay.toml"
    path.write_text(config_map["data"]["plura-relay.toml"])
    config = load_config(path, environ=ENV)
    assert config.state_dir == "/var/lib/plura-relay"
    assert config.output.log_dir == "/var/log/plura"
    assert config.metrics.listen == "127.0.0.1:9514"
    assert config.metrics.scrape_listen == "192.0.2.7:9515"
    assert [route.name for route in config.route] == ["nginx-weblog"]


def test_a_config_change_renames_the_configmap(tmp_path: Path) -> None:
    shutil.copytree(K8S, tmp_path / "k8s")
    before = by_kind(rendered("flannel"))["ConfigMap"]["metadata"]["name"]
    toml = tmp_path / "k8s" / "base" / "plura-relay.toml"
    toml.write_text(toml.read_text().replace("max_open_files = 1024", "max_open_files = 2048"))
    result = subprocess.run(
        [*kustomize_command(), str(tmp_path / "k8s" / "overlays" / "flannel")],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    after = by_kind([d for d in yaml.safe_load_all(result.stdout) if d])
    name = after["ConfigMap"]["metadata"]["name"]
    assert name != before
    volumes = after["DaemonSet"]["spec"]["template"]["spec"]["volumes"]
    assert next(v for v in volumes if v["name"] == "config")["configMap"] == {"name": name}


def _config(overlay: str, tmp_path: Path, environ: dict[str, str] = ENV) -> Any:
    path = tmp_path / f"{overlay}.toml"
    path.write_text(by_kind(rendered(overlay))["ConfigMap"]["data"]["plura-relay.toml"])
    return load_config(path, environ=environ)


def test_flannel_binds_the_bridge(tmp_path: Path) -> None:
    listen = _config("flannel", tmp_path).listen
    assert (listen.addresses, listen.interface, listen.allowed_sources) == (
        ["auto:514"],
        "cni0",
        [],
    )


def test_host_ip_binds_the_node_address_for_the_pod_network(tmp_path: Path) -> None:
    listen = _config("host-ip", tmp_path).listen
    assert listen.addresses == ["192.0.2.7:514"]
    assert listen.allowed_sources == ["10.244.0.0/16"]
    env = {e["name"]: e for e in _container("host-ip")["env"]}
    assert env["HOST_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
    assert env["POD_CIDR"]["value"] == "10.244.0.0/16"


def test_relay_forwards_through_a_bounded_spool(tmp_path: Path) -> None:
    [forward] = _config("relay", tmp_path).forward
    assert (forward.protocol, forward.max_spool_bytes, forward.tls.ca_file) == (
        "tls", 1 << 30, "/etc/plura-relay/tls/ca.pem",
    )  # fmt: skip
    mount = next(m for m in _container("relay")["volumeMounts"] if m["name"] == "upstream-ca")
    assert mount["mountPath"] == "/etc/plura-relay/tls"


def test_pod_identity_reads_pods_only() -> None:
    docs = by_kind(rendered("pod-identity"))
    assert docs["ClusterRole"]["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    ]
    binding = docs["ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == docs["ClusterRole"]["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "plura-relay", "namespace": "plura"}
    ]
    pod = _pod("pod-identity")
    assert (pod["serviceAccountName"], pod["automountServiceAccountToken"]) == ("plura-relay", True)
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert _pod("flannel")["automountServiceAccountToken"] is False


# --------------------------------------------------------------------------- the DaemonSet


def _pod(overlay: str = "flannel") -> dict[str, Any]:
    pod: dict[str, Any] = by_kind(rendered(overlay))["DaemonSet"]["spec"]["template"]["spec"]
    return pod


def _container(overlay: str = "flannel") -> dict[str, Any]:
    container: dict[str, Any] = _pod(overlay)["containers"][0]
    return container


def _daemonset() -> dict[str, Any]:
    return by_kind(rendered("flannel"))["DaemonSet"]


def _volume(name: str) -> dict[str, Any]:
    return next(v for v in _pod()["volumes"] if v["name"] == name)


def _mount(path: str) -> dict[str, Any]:
    return next(m for m in _container()["volumeMounts"] if m["mountPath"] == path)


DAEMONSET_SETTINGS: list[tuple[str, Callable[[], object], object]] = [
    ("namespace", lambda: _daemonset()["metadata"]["namespace"], "plura"),
    ("hostNetwork", lambda: _pod()["hostNetwork"], True),
    ("dnsPolicy", lambda: _pod()["dnsPolicy"], "ClusterFirstWithHostNet"),
    ("tolerations", lambda: _pod()["tolerations"], [{"operator": "Exists"}]),
    ("grace", lambda: _pod()["terminationGracePeriodSeconds"], 30),
    ("priority", lambda: _pod()["priorityClassName"], "system-node-critical"),
    ("surge", lambda: _daemonset()["spec"]["updateStrategy"],
     {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}),
    ("min-ready", lambda: _daemonset()["spec"]["minReadySeconds"], 10),
    ("no-host-port", lambda: "ports" in _container(), False),
    ("image", lambda: _container()["image"], "plura-relay:0.1.0"),
    ("args", lambda: _container()["args"],
     ["serve", "--config", "/etc/plura-relay/plura-relay.toml"]),
    ("host-ip-env", lambda: next(e for e in _container()["env"] if e["name"] == "HOST_IP"),
     {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}),
    ("scrape", lambda: _daemonset()["spec"]["template"]["metadata"]["annotations"],
     {"prometheus.io/scrape": "true", "prometheus.io/port": "9515",
      "prometheus.io/path": "/metrics"}),
    ("caps", lambda: _container()["securityContext"]["capabilities"],
     {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}),
    ("read-only-root", lambda: _container()["securityContext"]["readOnlyRootFilesystem"], True),
    ("no-escalation", lambda: _container()["securityContext"]["allowPrivilegeEscalation"], False),
    ("requests", lambda: _container()["resources"]["requests"], {"cpu": "100m", "memory": "64Mi"}),
    ("limits-no-cpu", lambda: _container()["resources"]["limits"], {"memory": "128Mi"}),
    ("liveness", lambda: _container()["livenessProbe"]["httpGet"],
     {"host": "127.0.0.1", "port": 9514, "path": "/healthz"}),
    ("readiness", lambda: _container()["readinessProbe"]["httpGet"],
     {"host": "127.0.0.1", "port": 9514, "path": "/readyz"}),
    ("log-dir", lambda: _volume("log-dir")["hostPath"]["path"], "/var/log/plura"),
    ("state-dir", lambda: _volume("state-dir")["hostPath"]["path"], "/var/lib/plura-relay"),
    ("log-dir-mount", lambda: _mount("/var/log/plura")["name"], "log-dir"),
    ("state-dir-mount", lambda: _mount("/var/lib/plura-relay")["name"], "state-dir"),
    ("config-mount", lambda: _mount("/etc/plura-relay")["name"], "config"),
]  # fmt: skip


@pytest.mark.parametrize(
    "get, expected", [pytest.param(g, e, id=i) for i, g, e in DAEMONSET_SETTINGS]
)
def test_daemonset_setting(get: Callable[[], object], expected: object) -> None:
    assert get() == expected


def test_readme_applies_the_flannel_overlay() -> None:
    readme = (K8S.parents[1] / "README.md").read_text()
    assert "kubectl apply -k conf/k8s/overlays/flannel" in readme
    for overlay in OVERLAYS:
        assert f"overlays/{overlay}" in readme


# --------------------------------------------------------------------------- nginx example


def test_nginx_example_configmap_is_conf_nginx() -> None:
    text = NGINX_YAML.read_text()
    assert nginx_configmap.synced(text) == text, (
        "nginx-example.yaml's ConfigMap differs from conf/nginx/: "
        "run python -m tests.deploy.nginx_configmap"
    )
    assert by_kind(documents(NGINX_YAML))["ConfigMap"]["data"] == nginx_configmap.expected_data()


def _nginx_pod() -> dict[str, Any]:
    pod: dict[str, Any] = by_kind(documents(NGINX_YAML))["Deployment"]["spec"]["template"]["spec"]
    return pod


def test_nginx_example_wiring() -> None:
    """initContainer renders from the ConfigMap into the emptyDir nginx uses; no hostPath."""
    pod = _nginx_pod()
    init, nginx = pod["initContainers"][0], pod["containers"][0]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert not [v for v in volumes.values() if "hostPath" in v]
    templates = next(m for m in init["volumeMounts"] if m["name"] == "templates")
    assert (
        volumes["templates"]["configMap"]["name"]
        == by_kind(documents(NGINX_YAML))["ConfigMap"]["metadata"]["name"]
    )
    assert init["command"] == ["/bin/sh", f"{templates['mountPath']}/render.sh"]
    out = next(e["value"] for e in init["env"] if e["name"] == "OUT")
    assert "emptyDir" in volumes["conf-d"]
    for container in (init, nginx):
        assert {"name": "conf-d", "mountPath": out} == {
            k: v
            for m in container["volumeMounts"]
            if m["name"] == "conf-d"
            for k, v in m.items()
            if k != "readOnly"
        }
    assert out == "/etc/nginx/conf.d"


# 10.244.2.0/24 on eth0 and a default route via 10.244.2.1, as /proc/net/route shows them
PROC_NET_ROUTE = (
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
    "eth0\t0002F40A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
    "eth0\t00000000\t0102F40A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
)
RENDERS = [
    pytest.param({}, "10.244.2.1", id="default-gateway"),
    pytest.param({"NODE_IP": "192.0.2.10"}, "192.0.2.10", id="NODE_IP-env"),
]


@pytest.mark.parametrize("env, node_ip", RENDERS)
def test_render_script_writes_nginx_conf_for_the_node(
    nginx: str, env: dict[str, str], node_ip: str, tmp_path: Path
) -> None:
    templates, out = tmp_path / "templates", tmp_path / "conf.d"
    templates.mkdir()
    out.mkdir()
    for key, text in by_kind(documents(NGINX_YAML))["ConfigMap"]["data"].items():
        (templates / key).write_text(text)
    routes = tmp_path / "route"
    routes.write_text(PROC_NET_ROUTE)
    environment = {"PATH": os.environ["PATH"], "OUT": str(out), "ROUTES": str(routes), **env}
    subprocess.run(["sh", str(templates / "render.sh")], env=environment, check=True, timeout=30)
    assert sorted(p.name for p in out.iterdir()) == ["plura-server.conf", "plura.conf"]
    rendered = (out / "plura.conf").read_text()
    assert rendered == (NGINX_CONF / "plura.conf").read_text().replace("${NODE_IP}", node_ip)
    assert f"access_log syslog:server={node_ip}:514,tag=nginx mod_plura;" in rendered
    conf = write_nginx_conf(tmp_path, [f"{out}/*.conf"])
    result = subprocess.run(
        nginx_command(nginx, conf, "-t"), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
