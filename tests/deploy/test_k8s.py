"""conf/k8s/: the manifests validate against Kubernetes 1.26 (strict), say what they promise,
and carry what they copy up to date.

- every document passes kubernetes-validate's strict 1.26 schema (unknown fields rejected);
- the DaemonSet's checksum/config is the sha256 of its ConfigMap's TOML, which
  `relay.config.load_config` loads;
- the DaemonSet has the settings the deployment relies on (host network, capabilities, probes...);
- the nginx example's ConfigMap holds conf/nginx/'s files, and its initContainer's render.sh,
  run here, writes a plura.conf that sends to the pod's default gateway and that `nginx -t` accepts.
"""

from __future__ import annotations

import os
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

    from tests.deploy import checksum, nginx_configmap
except ImportError:  # PyYAML comes with kubernetes-validate
    missing("PyYAML", "pip install kubernetes-validate")

DAEMONSET_YAML = K8S / "plura-relay-daemonset.yaml"
NGINX_YAML = K8S / "nginx-example.yaml"
KUBERNETES_VERSION = "1.26"


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(path: Path) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in documents(path)}


MANIFESTS = [
    pytest.param(path, index, id=f"{path.stem}-{doc['kind']}")
    for path in sorted(K8S.glob("*.yaml"))
    for index, doc in enumerate(documents(path))
]


@pytest.mark.parametrize("path, index", MANIFESTS)
def test_manifest_validates_strictly(
    kubernetes_validate: ModuleType, path: Path, index: int
) -> None:
    doc = documents(path)[index]
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{path.name} {doc['kind']}: {exc.message} at {list(exc.path)}")


def test_manifests_cover_what_is_deployed() -> None:
    assert [doc["kind"] for doc in documents(DAEMONSET_YAML)] == [
        "Namespace", "ConfigMap", "DaemonSet",
    ]  # fmt: skip
    assert [doc["kind"] for doc in documents(NGINX_YAML)] == ["ConfigMap", "Deployment", "Service"]


def test_strict_validation_has_teeth(kubernetes_validate: ModuleType) -> None:
    doc = by_kind(DAEMONSET_YAML)["DaemonSet"]
    doc["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFs"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFs"):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


# --------------------------------------------------------------------------- plura-relay


def test_checksum_annotation_is_current() -> None:
    assert checksum.current_checksum() == checksum.expected_checksum(), (
        "checksum/config is stale: run python -m tests.deploy.checksum"
    )


def test_checksum_update_rewrites_only_the_annotation(tmp_path: Path) -> None:
    copy = tmp_path / "daemonset.yaml"
    original = DAEMONSET_YAML.read_text()
    copy.write_text(original.replace('addresses = ["auto:514"]', 'addresses = ["auto:1514"]'))
    assert checksum.update(copy)
    assert checksum.current_checksum(copy) == checksum.expected_checksum(copy)
    changed = [
        (a, b)
        for a, b in zip(original.splitlines(), copy.read_text().splitlines(), strict=True)
        if a != b
    ]
    assert [b.strip().split(":")[0] for _, b in changed] == [
        'addresses = ["auto',
        "checksum/config",
    ]
    assert not checksum.update(copy)


def test_configmap_toml_loads_with_relay_config(tmp_path: Path) -> None:
    """Needs listen.interface, auto:PORT addresses, [metrics] and [[route]] in relay.config."""
    path = tmp_path / checksum.CONFIG_KEY
    path.write_text(checksum.config_toml())
    config = load_config(path)
    assert config.state_dir == "/var/lib/plura-relay"
    assert config.output.log_dir == "/var/log/plura"
    assert config.metrics.listen == "127.0.0.1:9514"
    assert [route.name for route in config.route] == ["nginx-weblog"]


def _pod() -> dict[str, Any]:
    pod: dict[str, Any] = by_kind(DAEMONSET_YAML)["DaemonSet"]["spec"]["template"]["spec"]
    return pod


def _container() -> dict[str, Any]:
    container: dict[str, Any] = _pod()["containers"][0]
    return container


def _volume(name: str) -> dict[str, Any]:
    return next(v for v in _pod()["volumes"] if v["name"] == name)


def _mount(path: str) -> dict[str, Any]:
    return next(m for m in _container()["volumeMounts"] if m["mountPath"] == path)


DAEMONSET_SETTINGS: list[tuple[str, Callable[[], object], object]] = [
    ("namespace", lambda: by_kind(DAEMONSET_YAML)["DaemonSet"]["metadata"]["namespace"], "plura"),
    ("hostNetwork", lambda: _pod()["hostNetwork"], True),
    ("dnsPolicy", lambda: _pod()["dnsPolicy"], "ClusterFirstWithHostNet"),
    ("tolerations", lambda: _pod()["tolerations"], [{"operator": "Exists"}]),
    ("grace", lambda: _pod()["terminationGracePeriodSeconds"], 30),
    ("image", lambda: _container()["image"], "plura-relay:0.1.0"),
    (
        "args",
        lambda: _container()["args"],
        ["serve", "--config", "/etc/plura-relay/plura-relay.toml"],
    ),
    ("caps", lambda: _container()["securityContext"]["capabilities"],
     {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}),
    ("read-only-root", lambda: _container()["securityContext"]["readOnlyRootFilesystem"], True),
    ("no-escalation", lambda: _container()["securityContext"]["allowPrivilegeEscalation"], False),
    ("cpu-request", lambda: _container()["resources"]["requests"]["cpu"], "100m"),
    ("memory-limit", lambda: _container()["resources"]["limits"]["memory"], "128Mi"),
    ("liveness", lambda: _container()["livenessProbe"]["httpGet"],
     {"host": "127.0.0.1", "port": 9514, "path": "/healthz"}),
    ("readiness", lambda: _container()["readinessProbe"]["httpGet"],
     {"host": "127.0.0.1", "port": 9514, "path": "/readyz"}),
    ("log-dir", lambda: _volume("log-dir")["hostPath"]["path"], "/var/log/plura"),
    ("state-dir", lambda: _volume("state-dir")["hostPath"]["path"], "/var/lib/plura-relay"),
    ("log-dir-mount", lambda: _mount("/var/log/plura")["name"], "log-dir"),
    ("state-dir-mount", lambda: _mount("/var/lib/plura-relay")["name"], "state-dir"),
    ("config-mount", lambda: (_mount("/etc/plura-relay")["name"], _volume("config")["configMap"]),
     ("config", {"name": by_kind(DAEMONSET_YAML)["ConfigMap"]["metadata"]["name"]})),
]  # fmt: skip


@pytest.mark.parametrize(
    "get, expected", [pytest.param(g, e, id=i) for i, g, e in DAEMONSET_SETTINGS]
)
def test_daemonset_setting(get: Callable[[], object], expected: object) -> None:
    assert get() == expected


def test_daemonset_config_matches_its_own_addresses() -> None:
    """The probes and the TOML's [metrics] listen agree; the log dirs of TOML and volume too."""
    toml = checksum.config_toml()
    assert 'listen = "127.0.0.1:9514"' in toml
    assert 'log_dir = "/var/log/plura"' in toml
    assert 'state_dir = "/var/lib/plura-relay"' in toml


# --------------------------------------------------------------------------- nginx example


def test_nginx_example_configmap_is_conf_nginx() -> None:
    text = NGINX_YAML.read_text()
    assert nginx_configmap.synced(text) == text, (
        "nginx-example.yaml's ConfigMap differs from conf/nginx/: "
        "run python -m tests.deploy.nginx_configmap"
    )
    assert by_kind(NGINX_YAML)["ConfigMap"]["data"] == nginx_configmap.expected_data()


def _nginx_pod() -> dict[str, Any]:
    pod: dict[str, Any] = by_kind(NGINX_YAML)["Deployment"]["spec"]["template"]["spec"]
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
        == by_kind(NGINX_YAML)["ConfigMap"]["metadata"]["name"]
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
    for key, text in by_kind(NGINX_YAML)["ConfigMap"]["data"].items():
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
