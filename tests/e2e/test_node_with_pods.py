"""End to end: a worker node with pods, as in the vendor guide, in network namespaces.

The node namespace holds flannel's bridge `cni0` at 10.244.2.1/24 and plura-relay started with
`listen.addresses = ["auto:514"]`, `listen.interface = "cni0"` and the shipped nginx route. Three
pods run a real rsyslogd with the shipped rsyslog.d snippet (two over UDP, one over TCP), each
with a private /dev as a container has, and `logger` writes to that pod's /dev/log; a fourth pod
runs a real nginx with the shipped `plura.conf` (access log as syslog to the node) and gets a
POST from a client in another pod.

Expected: `ceelog-10.244.2.{5,6,7}.log` with exactly the logger lines (hostname = the pod's own,
set in its UTS namespace, which proves the line went through that pod's rsyslogd), the pods
registered as children, and `weblog.log` holding nginx's JSON access line with the POST body.
Variant `relay-then-bridge` starts plura-relay before `cni0` exists: it must bind when it appears.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.topology import (
    NODE_IP,
    NS_PREFIX,
    Topology,
    clean_env,
    ip,
    remove_stale,
    stop,
    wait_until,
)
from tests.mod_plura import FIELDS, parse_mod_plura

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
POD_UDP_SNIPPET = REPO / "rsyslog.d" / "pod-udp.conf"
POD_TCP_SNIPPET = REPO / "rsyslog.d" / "pod-tcp.conf"
NGINX_PLURA_CONF = REPO / "conf" / "nginx" / "plura.conf"
NODE_IP_PLACEHOLDER = "NODE_IP"
SYSLOG_PORT = 514
WEB_PORT = 8080
TOOLS = ("ip", "ss", "rsyslogd", "logger", "nginx", "curl", "unshare")
SBIN_PATH = "/usr/sbin:/sbin:/usr/bin:/bin"

MESSAGES_PER_POD = 5
LATE_BIND_GRACE_S = 1.0
"""How long plura-relay must stay up waiting for `cni0` before the bridge is created."""
READY_TIMEOUT_S = 15.0
DELIVERY_TIMEOUT_S = 15.0
POST_BODY = '{"user":"kim","action":"login","note":"로그인 \\"quoted\\" & more"}'
CEE_KEYS = [
    "timegenerated", "programname", "hostname", "syslogtag", "pri", "pri-text",
    "syslogfacility", "syslogfacility-text", "syslogseverity", "syslogseverity-text", "msg",
]  # fmt: skip


@dataclass(frozen=True)
class Pod:
    name: str
    address: str
    transport: str  # how its rsyslog forwards: "udp" | "tcp"

    @property
    def hostname(self) -> str:
        return f"pod-{self.name}"

    @property
    def tag(self) -> str:
        return f"app-{self.name}"

    def messages(self) -> list[str]:
        return [
            f"message {i} from {self.hostname} over {self.transport}"
            for i in range(1, MESSAGES_PER_POD + 1)
        ]


SYSLOG_PODS = (
    Pod("a", "10.244.2.5", "udp"),
    Pod("b", "10.244.2.6", "udp"),
    Pod("c", "10.244.2.7", "tcp"),
)
WEB_POD = Pod("web", "10.244.2.8", "udp")
CLIENT_POD = SYSLOG_PODS[0]

RELAY_CONFIG = """\
state_dir = "@STATE@"

[listen]
addresses = ["auto:514"]
interface = "cni0"

[output]
log_dir = "@LOGS@"

[[route]]
name = "nginx-weblog"
file = "weblog.log"
template = "msg"
stop = true
[route.match]
syslogtag_contains = "nginx"
"""

POD_RSYSLOG_CONF = """\
# A pod image's rsyslog.conf with its module(load=...) lines commented out, as the shipped
# drop-in asks (it loads imuxsock itself, for the pod's own /dev/log), then the drop-in.
global(workDirectory="@WORK@")
#module(load="imuxsock")
#module(load="imklog")
include(file="@SNIPPET@")
"""

NGINX_CONF = """\
user root;
worker_processes 1;
daemon off;
pid @PREFIX@/nginx.pid;
error_log @PREFIX@/error.log info;
events { worker_connections 64; }
http {
    client_body_temp_path @PREFIX@/client_body;
    proxy_temp_path @PREFIX@/proxy;
    fastcgi_temp_path @PREFIX@/fastcgi;
    uwsgi_temp_path @PREFIX@/uwsgi;
    scgi_temp_path @PREFIX@/scgi;
    # /etc/nginx/conf.d/plura.conf: PLURA's mod_plura log_format, access log as syslog
    include @PLURA_CONF@;
    server {
        listen @ADDRESS@:@PORT@;
        # proxied, so that nginx reads the body and $request_body is set
        location / { proxy_pass http://127.0.0.1:8081; }
    }
    server {
        listen 127.0.0.1:8081;
        access_log off;
        location / { return 200 "ok\\n"; }
    }
}
"""


def fill(template: str, **values: object) -> str:
    for key, value in values.items():
        template = template.replace(f"@{key}@", str(value))
    return template


def shipped(path: Path, workdir: Path) -> Path:
    """The shipped file with NODE_IP / ${NODE_IP} set to the node's address, in `workdir`."""
    assert path.exists(), f"{path.relative_to(REPO)} is missing from the repository"
    text = path.read_text().replace(f"${{{NODE_IP_PLACEHOLDER}}}", NODE_IP)  # nginx: envsubst
    target = workdir / path.name
    target.write_text(text.replace(NODE_IP_PLACEHOLDER, NODE_IP))  # rsyslog.d: sed
    return target


# --------------------------------------------------------------------------- fixtures


def _unusable_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    missing = [tool for tool in TOOLS if shutil.which(tool, path=SBIN_PATH) is None]
    if missing:
        return (f"missing {', '.join(missing)}: "
                "apt-get install -y rsyslog nginx-light bsdutils iproute2 curl")  # fmt: skip
    probe = f"{NS_PREFIX}{os.getpid()}-probe"
    try:
        ip("netns", "add", probe)
    except (OSError, RuntimeError) as exc:
        return f"`ip netns` unavailable: {exc}"
    ip("netns", "del", probe, check=False)
    return None


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Topology]:
    """An empty topology, torn down (processes by pid, then namespaces) whatever happens."""
    reason = _unusable_reason()
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    remove_stale()
    topology = Topology(tmp_path)
    try:
        yield topology
    finally:
        topology.close()


# --------------------------------------------------------------------------- the pieces


def start_relay(node: Topology, tmp_path: Path, extra: str = "") -> subprocess.Popen[bytes]:
    config = tmp_path / "plura-relay.toml"
    config.write_text(fill(RELAY_CONFIG, STATE=tmp_path / "state", LOGS=tmp_path / "logs") + extra)
    env = {**clean_env(), "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "relay", "serve", "--config", str(config)]
    return node.spawn(node.node, argv, name="plura-relay", env=env, cwd=REPO)


def wait_for_relay(node: Topology, relay: subprocess.Popen[bytes]) -> None:
    wanted = {("udp", NODE_IP), ("tcp", NODE_IP)}
    up = wait_until(
        lambda: relay.poll() is not None or wanted <= node.listening(node.node, SYSLOG_PORT),
        READY_TIMEOUT_S,
    )
    assert up and relay.poll() is None, (
        f"plura-relay is not listening on {NODE_IP}:{SYSLOG_PORT} (udp and tcp)\n{node.outputs()}"
    )


def socket_path(pod: Pod, tmp_path: Path) -> Path:
    """The pod's /dev/log as seen from outside the pod."""
    path = tmp_path / f"pod-{pod.name}" / "dev" / "log"
    assert len(str(path)) < 100, f"unix socket path too long: {path}"
    return path


def start_rsyslogd(node: Topology, netns: str, pod: Pod, tmp_path: Path) -> None:
    workdir = tmp_path / f"pod-{pod.name}"
    workdir.mkdir()
    snippet = shipped(POD_TCP_SNIPPET if pod.transport == "tcp" else POD_UDP_SNIPPET, workdir)
    conf = workdir / "rsyslog.conf"
    conf.write_text(fill(POD_RSYSLOG_CONF, WORK=workdir, SNIPPET=snippet))
    argv = ["rsyslogd", "-n", "-f", str(conf), "-i", str(workdir / "rsyslogd.pid")]
    dev = socket_path(pod, tmp_path).parent
    node.spawn(netns, argv, name=f"rsyslogd-{pod.name}", hostname=pod.hostname, dev=dev)


def start_nginx(node: Topology, netns: str, pod: Pod, tmp_path: Path) -> None:
    prefix = tmp_path / f"pod-{pod.name}"
    prefix.mkdir()
    plura_conf = shipped(NGINX_PLURA_CONF, prefix)
    conf = prefix / "nginx.conf"
    conf.write_text(fill(NGINX_CONF, PREFIX=prefix, PLURA_CONF=plura_conf, ADDRESS=pod.address,
                         PORT=WEB_PORT))  # fmt: skip
    argv = ["nginx", "-p", f"{prefix}/", "-c", str(conf), "-e", str(prefix / "error.log")]
    node.spawn(netns, argv, name="nginx", hostname=pod.hostname)


def add_pods(node: Topology, tmp_path: Path) -> dict[str, str]:
    """The syslog pods and the web pod, their daemons started and ready; pod name -> netns."""
    netns = {pod.name: node.add_pod(pod.name, pod.address) for pod in (*SYSLOG_PODS, WEB_POD)}
    for pod in SYSLOG_PODS:
        start_rsyslogd(node, netns[pod.name], pod, tmp_path)
    start_nginx(node, netns[WEB_POD.name], WEB_POD, tmp_path)
    ready = wait_until(
        lambda: (
            all(socket_path(pod, tmp_path).exists() for pod in SYSLOG_PODS)
            and ("tcp", WEB_POD.address) in node.listening(netns[WEB_POD.name], WEB_PORT)
        ),
        READY_TIMEOUT_S,
    )
    assert ready, f"pods' rsyslogd or nginx did not come up\n{node.outputs()}"
    for pod in SYSLOG_PODS:  # every rsyslog error or warning links its rsyslog.com/e/ page
        output = node.output(f"rsyslogd-{pod.name}")
        assert "rsyslog.com/e/" not in output, f"rsyslogd in {pod.hostname}: {output}"
    return netns


def log_messages(node: Topology, netns: dict[str, str], tmp_path: Path) -> None:
    """`logger` in each pod, to that pod's rsyslogd socket (never the host's /dev/log)."""
    for pod in SYSLOG_PODS:
        sock = str(socket_path(pod, tmp_path))
        for text in pod.messages():
            node.run(netns[pod.name], ["logger", "-u", sock, "-t", pod.tag, text])


def post_to_nginx(node: Topology, netns: dict[str, str]) -> None:
    url = f"http://{WEB_POD.address}:{WEB_PORT}/api/login?lang=ko"
    argv = ["curl", "-sS", "--noproxy", "*", "--max-time", "5", "-X", "POST",
            "-H", "Content-Type: application/json", "-A", "e2e-client/1.0",
            "--data-binary", POST_BODY, url]  # fmt: skip
    assert node.run(netns[CLIENT_POD.name], argv) == "ok\n"


# --------------------------------------------------------------------------- reading results


def read_ceelog(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert all(list(record) == ["ceelog"] for record in records), records
    return [record["ceelog"] for record in records]


def app_lines(path: Path) -> list[dict[str, str]]:
    """Lines of the pod's own programs (rsyslogd also forwards its own start message)."""
    return [line for line in read_ceelog(path) if line["programname"] != "rsyslogd"]


def delivered(log_dir: Path) -> bool:
    weblog = log_dir / "weblog.log"
    return weblog.exists() and all(
        len(app_lines(log_dir / f"ceelog-{pod.address}.log")) >= MESSAGES_PER_POD
        for pod in SYSLOG_PODS
    )


def expected_line(pod: Pod, text: str) -> dict[str, str]:
    return {
        "programname": pod.tag,
        "hostname": pod.hostname,
        "syslogtag": f"{pod.tag}:",
        "pri": "13",
        "pri-text": "user.notice",
        "syslogfacility": "1",
        "syslogfacility-text": "user",
        "syslogseverity": "5",
        "syslogseverity-text": "notice",
        "msg": f" {text}",
    }


def children(state_dir: Path) -> dict[str, dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "relay", "children", "--state-dir", str(state_dir), "--json"],
        capture_output=True, text=True, check=True, cwd=REPO,
        env={**clean_env(), "PYTHONPATH": str(REPO)},
    ).stdout  # fmt: skip
    return {child["ip"]: child for child in json.loads(out)}


# --------------------------------------------------------------------------- the test


def tcp_peers(node: Topology, netns: str) -> list[str]:
    """Established TCP connections from `netns` to the node's syslog port."""
    out = node.run(netns, ["ss", "-Htn", "state", "established", f"dport = :{SYSLOG_PORT}"])
    return out.splitlines()


def check_ceelogs(log_dir: Path) -> None:
    for pod in SYSLOG_PODS:
        path = log_dir / f"ceelog-{pod.address}.log"
        lines = read_ceelog(path)
        assert all(list(line) == CEE_KEYS for line in lines), lines
        assert all(datetime.fromisoformat(line["timegenerated"]).tzinfo for line in lines)
        own = [line for line in lines if line["programname"] == "rsyslogd"]
        assert all(line["hostname"] == pod.hostname for line in own), own
        got = [{k: v for k, v in line.items() if k != "timegenerated"}
               for line in app_lines(path)]  # fmt: skip
        assert got == [expected_line(pod, text) for text in pod.messages()], path.name


def check_weblog(log_dir: Path) -> None:
    assert not (log_dir / f"ceelog-{WEB_POD.address}.log").exists(), "nginx route did not stop"
    weblog = (log_dir / "weblog.log").read_bytes().splitlines()
    assert len(weblog) == 1, weblog
    # rsyslog's `%msg%`: the space after `nginx:` stays, then PLURA's mod_plura object
    assert weblog[0].startswith(b" {"), weblog
    access = parse_mod_plura(weblog[0][1:])
    assert tuple(access) == FIELDS, access
    assert access["Post-body"] == POST_BODY, access
    assert (access["Method"], access["Uri"]) == ("POST", "/api/login"), access
    assert access["Request"].startswith("POST /api/login?lang=ko "), access
    assert access["Remote-addr"] == CLIENT_POD.address, access


def check_children(state_dir: Path) -> None:
    found = children(state_dir)
    assert set(found) == {pod.address for pod in (*SYSLOG_PODS, WEB_POD)}, found
    for pod in (*SYSLOG_PODS, WEB_POD):
        assert found[pod.address]["hostname"] == pod.hostname, found[pod.address]
    for pod in SYSLOG_PODS:
        assert found[pod.address]["messages"] >= MESSAGES_PER_POD, found[pod.address]


def start_node(node: Topology, tmp_path: Path, *, relay_first: bool) -> subprocess.Popen[bytes]:
    """The node namespace, its bridge and plura-relay listening on the bridge's address."""
    node.add_node()
    if relay_first:
        relay = start_relay(node, tmp_path)
        time.sleep(LATE_BIND_GRACE_S)
        assert relay.poll() is None, f"plura-relay gave up without cni0\n{node.outputs()}"
        node.add_bridge()
    else:
        node.add_bridge()
        relay = start_relay(node, tmp_path)
    wait_for_relay(node, relay)
    return relay


@pytest.mark.parametrize(
    "relay_first", [False, True], ids=["bridge-then-relay", "relay-then-bridge"]
)
def test_node_with_pods(node: Topology, tmp_path: Path, relay_first: bool) -> None:
    log_dir, state_dir = tmp_path / "logs", tmp_path / "state"
    relay = start_node(node, tmp_path, relay_first=relay_first)
    netns = add_pods(node, tmp_path)
    log_messages(node, netns, tmp_path)
    post_to_nginx(node, netns)
    arrived = wait_until(lambda: delivered(log_dir), DELIVERY_TIMEOUT_S)
    tcp = {pod.name: len(tcp_peers(node, netns[pod.name])) for pod in SYSLOG_PODS}
    assert stop(relay) == 0, f"plura-relay did not exit cleanly\n{node.outputs()}"
    assert "Traceback" not in node.output("plura-relay"), node.output("plura-relay")
    assert arrived, f"not everything arrived: {sorted(os.listdir(log_dir))}\n{node.outputs()}"
    assert tcp == {pod.name: int(pod.transport == "tcp") for pod in SYSLOG_PODS}

    check_ceelogs(log_dir)
    check_weblog(log_dir)
    check_children(state_dir)


# --------------------------------------------------------------------------- pod identity

E2E_NODE_NAME = "e2e-node"
KUBE_CONFIG = """
[kubernetes]
enabled = true
node_name = "@NODE@"
kubeconfig = "@KUBECONFIG@"
"""


def start_apiserver(node: Topology, tmp_path: Path) -> str:
    """etcd and the test API server inside the node's namespace (its own loopback, so fixed
    ports collide with nobody); returns the API server's URL."""
    from tests.kube.apiserver import build_dir

    build = build_dir()
    etcd = "http://127.0.0.1:2379"
    node.spawn(node.node, [str(build / "bin" / "etcd"), "--data-dir", str(tmp_path / "etcd"),
                           "--listen-client-urls", etcd, "--advertise-client-urls", etcd,
                           "--listen-peer-urls", "http://127.0.0.1:2380"], name="etcd")  # fmt: skip
    url = "https://127.0.0.1:6443"
    argv = [str(build / "bin" / "test-apiserver"), "--etcd", etcd, "--port", "6443",
            "--cert-dir", str(tmp_path / "certs")]  # fmt: skip

    def ready() -> bool:
        try:
            return node.run(node.node, ["curl", "-sk", "--max-time", "2", url + "/readyz"]) == "ok"
        except RuntimeError:
            return False

    assert wait_until(lambda: _etcd_healthy(node, etcd), 30), f"etcd not up\n{node.outputs()}"
    node.spawn(node.node, argv, name="test-apiserver")
    assert wait_until(ready, 60), f"test API server not ready\n{node.outputs()}"
    return url


def _etcd_healthy(node: Topology, etcd: str) -> bool:
    try:
        return '"health":"true"' in node.run(
            node.node, ["curl", "-s", "--max-time", "2", etcd + "/health"]
        )
    except RuntimeError:
        return False


def create_pod_objects(node: Topology, url: str) -> None:
    """The namespace pods as the API server knows them: this node, their veth addresses."""
    for pod in (*SYSLOG_PODS, WEB_POD):
        body = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{pod.name}-7d4b9c8f6d-x{pod.name}", "namespace": "e2e",
                         "labels": {"pod-template-hash": "7d4b9c8f6d"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                              "name": f"{pod.name}-7d4b9c8f6d", "uid": "u",
                                              "controller": True}]},
            "spec": {"nodeName": E2E_NODE_NAME, "containers": [{"name": "app", "image": "x"}]},
            "status": {"phase": "Running", "podIP": pod.address, "podIPs": [{"ip": pod.address}],
                       "startTime": "2026-12-02T10:00:00Z"},
        }  # fmt: skip
        node.run(node.node, ["curl", "-sk", "--fail", "-XPOST", "-H", "Content-Type: application/json",
                             "--data-binary", json.dumps(body), f"{url}/api/v1/namespaces/e2e/pods"])  # fmt: skip


@pytest.mark.timeout(240)
def test_node_with_pods_known_to_the_api_server(node: Topology, tmp_path: Path) -> None:
    """The same node, with the pods in a real API server: `children` names them."""
    log_dir, state_dir = tmp_path / "logs", tmp_path / "state"
    node.add_node()
    node.add_bridge()
    url = start_apiserver(node, tmp_path)
    create_pod_objects(node, url)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "e2e",
        "clusters": [{"name": "e2e", "cluster": {"server": url, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "anonymous", "user": {}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "anonymous"}}],
    }))  # fmt: skip
    relay = start_relay(node, tmp_path,
                        extra=fill(KUBE_CONFIG, NODE=E2E_NODE_NAME, KUBECONFIG=kubeconfig))  # fmt: skip
    wait_for_relay(node, relay)
    assert wait_until(lambda: "pod watch: 4 pods on node" in node.output("plura-relay"), 30), (
        node.outputs()
    )
    netns = add_pods(node, tmp_path)
    log_messages(node, netns, tmp_path)
    post_to_nginx(node, netns)
    arrived = wait_until(lambda: delivered(log_dir), DELIVERY_TIMEOUT_S)
    assert stop(relay) == 0, f"plura-relay did not exit cleanly\n{node.outputs()}"
    assert arrived, f"not everything arrived: {sorted(os.listdir(log_dir))}\n{node.outputs()}"
    check_ceelogs(log_dir)  # the files are PLURA's, as without the API server
    check_weblog(log_dir)
    check_children(state_dir)
    found = children(state_dir)
    for pod in (*SYSLOG_PODS, WEB_POD):
        child = found[pod.address]
        assert (child["namespace"], child["pod"], child["workload_kind"], child["workload"]) == (
            "e2e",
            f"{pod.name}-7d4b9c8f6d-x{pod.name}",
            "Deployment",
            pod.name,
        ), child
        assert child["node"] == E2E_NODE_NAME
