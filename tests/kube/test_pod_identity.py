"""Pod identity through real processes: `plura-relay serve` watching the real test API server
(k8s.io/apiserver on etcd), messages sent from the pods' addresses (loopback addresses stand in
for pod IPs), children read with `plura-relay children --json`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ServerProcess, free_port, send_udp
from tests.kube.apiserver import ApiServer, Etcd, build_dir

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
NODE = "node-a"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ApiServer]:
    build = build_dir()
    etcd = Etcd(build, tmp_path)
    api = ApiServer(build, etcd, tmp_path)
    try:
        yield api
    finally:
        api.stop()
        etcd.stop()


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Relay:
    def __init__(self, tmp_path: Path, api: ApiServer, *, workers: int = 1,
                 grace_s: float = 120.0, routes: str = "") -> None:  # fmt: skip
        self.hooks = tmp_path / "hooks.ndjson"
        self.metrics_port = free_port()
        hook = (
            f"import sys; open({str(self.hooks)!r}, 'ab').write(sys.stdin.buffer.read() + b'\\n')"
        )
        config = tmp_path / "relay.toml"
        config.write_text(
            f"[children]\nsave_interval_s = 0.1\nhook_command = {json.dumps([sys.executable, '-c', hook])}\n"
            f"[kubernetes]\nenabled = true\nnode_name = {NODE!r}\n"
            f"kubeconfig = {str(api.kubeconfig(tmp_path / 'kubeconfig'))!r}\n"
            f'deleted_pod_grace_s = {grace_s}\nlabels = ["app"]\n{routes}'
        )
        self.server = ServerProcess(tmp_path, "--config", str(config), "--workers", str(workers))
        self.server.args[self.server.args.index("--metrics") + 1] = f"127.0.0.1:{self.metrics_port}"

    def start(self) -> Relay:
        self.server.start()
        return self

    def send(self, ip: str, text: str = "hello") -> None:
        send_udp(
            self.server.port,
            [f"<14>Dec  2 10:00:00 h{ip.rsplit('.', 1)[1]} app: {text}".encode()],
            source=ip,
        )

    def children(self) -> list[dict[str, Any]]:
        out = subprocess.run(
            [sys.executable, "-m", "relay", "children", "--json", "--state-dir", str(self.server.state_dir)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        return list(json.loads(out.stdout))

    def child(self, ip: str, messages: int, pod: str | None = None) -> dict[str, Any]:
        """Wait until the child of `ip` (and `pod`) has `messages`."""

        def found() -> dict[str, Any] | None:
            for c in self.children():
                if c["ip"] == ip and c["pod"] == (pod or "") and c["messages"] >= messages:
                    return c
            return None

        return dict(wait_until(found, 15, f"child {ip} {pod} with {messages} messages"))

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as r:
            text = r.read().decode()
        values = {}
        for line in text.splitlines():
            if line.startswith("plura_relay_kubernetes_") or line.startswith(
                "plura_relay_children "
            ):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def ready(self) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=5) as r:
            return r.status == 200

    def log_count(self, text: str) -> int:
        return self.server.log.count(text)

    def wait_log(self, text: str, count: int = 1, timeout_s: float = 30) -> None:
        wait_until(
            lambda: self.log_count(text) >= count, timeout_s, f"{text!r} x{count} in the log"
        )

    def stop(self) -> None:
        assert self.server.stop() == 0


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "supervisor-with-workers"])
def test_sources_become_pods_of_this_node_only(
    tmp_path: Path, cluster: ApiServer, workers: int
) -> None:
    api = cluster.start()
    api.create_pod(
        "shop",
        "web-7d4b9c8f6d-abcde",
        node=NODE,
        ip="127.0.0.11",
        deployment="web",
        labels={"app": "web", "other": "x"},
        containers=("nginx", "rsyslog"),
    )
    api.create_pod("shop", "far-away", node="node-b", ip="127.0.0.12")
    api.create_pod("kube-system", "proxy", node=NODE, ip="127.0.0.13", host_network=True)
    routes = '[[route]]\nname = "per-pod"\nfile = "pods/{namespace}/{workload}/{pod}.log"\nstop = false\n'
    relay = Relay(tmp_path, api, workers=workers, routes=routes).start()
    try:
        relay.wait_log("pod watch: 2 pods on node node-a")  # the host-network one is not indexed
        for ip in ("127.0.0.11", "127.0.0.12", "127.0.0.13"):
            relay.send(ip)
        web = relay.child("127.0.0.11", 1, pod="web-7d4b9c8f6d-abcde")
        assert (web["namespace"], web["workload_kind"], web["workload"], web["node"]) == (
            "shop",
            "Deployment",
            "web",
            NODE,
        )
        assert web["containers"] == ["nginx", "rsyslog"] and web["labels"] == {"app": "web"}
        assert web["pod_uid"]
        # another node's pod and a host-network pod are plain IPs
        for ip in ("127.0.0.12", "127.0.0.13"):
            other = relay.child(ip, 1)
            assert other["pod_uid"] is None and other["namespace"] == ""
        table = subprocess.run(
            [sys.executable, "-m", "relay", "children", "--state-dir", str(relay.server.state_dir)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        header, *rows = table.splitlines()
        assert header.split()[:5] == ["IP", "HOSTNAME", "NAMESPACE", "POD", "WORKLOAD"]
        assert [r.split()[:5] for r in rows if r.startswith("127.0.0.11 ")] == [
            ["127.0.0.11", "h11", "shop", "web-7d4b9c8f6d-abcde", "Deployment/web"]
        ]
        # route file names: the pod's in the process that has the index, `unknown` in workers
        name = "shop/web/web-7d4b9c8f6d-abcde" if workers == 1 else "unknown/unknown/unknown"
        wait_until(lambda: (relay.server.log_dir / "pods" / f"{name}.log").exists(), 10, name)
        assert (relay.server.log_dir / "ceelog-127.0.0.11.log").exists()  # PLURA's file stays
        m = wait_until(
            lambda: (
                (v := relay.metrics()).get("plura_relay_kubernetes_sources_resolved_total") and v
            ),
            10,
            "metrics",
        )
        assert m["plura_relay_kubernetes_connected"] == 1
        assert m["plura_relay_kubernetes_sources_unresolved_total"] >= 2
        hooks = [json.loads(line) for line in relay.hooks.read_text().splitlines()]
        [announced] = [h for h in hooks if h["ip"] == "127.0.0.11"]
        assert (announced["namespace"], announced["pod"], announced["workload"]) == (
            "shop",
            "web-7d4b9c8f6d-abcde",
            "web",
        )
    finally:
        relay.stop()


def test_ip_reused_by_a_new_pod_is_a_new_child_and_late_messages_find_the_old(
    tmp_path: Path, cluster: ApiServer
) -> None:
    api = cluster.start()
    api.create_pod("shop", "web-old", node=NODE, ip="127.0.0.21", start_time="2026-12-02T10:00:00Z")
    api.create_pod("shop", "gone", node=NODE, ip="127.0.0.22")
    relay = Relay(tmp_path, api, grace_s=3.0).start()
    try:
        relay.wait_log("pod watch: 2 pods on node node-a")
        relay.send("127.0.0.21")
        relay.send("127.0.0.22")
        relay.child("127.0.0.21", 1, pod="web-old")
        relay.child("127.0.0.22", 1, pod="gone")
        api.delete_pod("shop", "web-old")
        api.delete_pod("shop", "gone")
        time.sleep(0.5)  # the DELETED events are in
        unresolved = relay.metrics()["plura_relay_kubernetes_sources_unresolved_total"]
        resolved = relay.metrics()["plura_relay_kubernetes_sources_resolved_total"]
        relay.send("127.0.0.21", "late")  # within the grace period: still the old pod
        wait_until(
            lambda: relay.metrics()["plura_relay_kubernetes_sources_resolved_total"] > resolved,
            10,
            "late",
        )
        assert relay.metrics()["plura_relay_kubernetes_sources_unresolved_total"] == unresolved
        api.create_pod(
            "shop", "web-new", node=NODE, ip="127.0.0.21", start_time="2026-12-02T11:00:00Z"
        )
        wait_until(lambda: relay.metrics()["plura_relay_kubernetes_events_total"] >= 3, 10, "ADDED")
        relay.send("127.0.0.21", "new")  # within the old pod's grace, but a newer pod has the IP
        relay.send("127.0.0.21", "new")
        new = relay.child("127.0.0.21", 1, pod="web-new")
        time.sleep(3.5)  # past the grace of `gone`, and nobody took its IP: a plain IP again
        relay.send("127.0.0.22", "after grace")
        relay.child("127.0.0.22", 1)
        relay.wait_log("new child server 127.0.0.21", 2)
        wait_until(
            lambda: (
                relay.hooks.exists() and relay.hooks.read_text().count('"ip":"127.0.0.21"') == 2
            ),
            10,
            "hooks",
        )
    finally:
        relay.stop()
    children = [c for c in relay.children() if c["ip"] == "127.0.0.21"]  # saved whole at the stop
    assert sorted(c["pod"] for c in children) == ["web-new", "web-old"]
    [old] = [c for c in children if c["pod"] == "web-old"]
    [new] = [c for c in children if c["pod"] == "web-new"]
    assert old["pod_uid"] != new["pod_uid"]
    # the old child keeps its own first/last seen and count (the late message included)
    assert old["messages"] == 2 and new["messages"] == 2
    assert old["last_seen"] < new["first_seen"]
    assert relay.log_count("new child server 127.0.0.21") == 2  # each announced once
    assert "pod shop/web-new uid " + new["pod_uid"] in relay.server.log
    hooks = [json.loads(line) for line in relay.hooks.read_text().splitlines()]
    assert sorted(h["pod"] for h in hooks if h["ip"] == "127.0.0.21") == ["web-new", "web-old"]


def test_apiserver_restart_resumes_the_watch_without_duplicates(
    tmp_path: Path, cluster: ApiServer
) -> None:
    api = cluster.start()
    api.create_pod("shop", "a", node=NODE, ip="127.0.0.31")
    relay = Relay(tmp_path, api).start()
    try:
        relay.wait_log("pod watch: 1 pods on node node-a")
        relay.send("127.0.0.31")
        relay.child("127.0.0.31", 1, pod="a")
        api.stop()
        resolved = relay.metrics()["plura_relay_kubernetes_sources_resolved_total"]
        relay.send("127.0.0.31", "while the API is away")  # reception unaffected, pod still known
        wait_until(
            lambda: relay.metrics()["plura_relay_kubernetes_sources_resolved_total"] > resolved,
            10,
            "resolved",
        )
        assert relay.ready()
        relay.wait_log("pod watch: API server not usable")
        api.start()
        relay.wait_log("pod watch: connected to the API server again")
        api.create_pod("shop", "b", node=NODE, ip="127.0.0.32")
        wait_until(lambda: relay.metrics()["plura_relay_kubernetes_pods"] == 2, 10, "pod b")
        relay.send("127.0.0.32")
        relay.child("127.0.0.32", 1, pod="b")
        relay.send("127.0.0.31")
        assert "relisting" not in relay.server.log  # resumed from its resourceVersion
    finally:
        relay.stop()
    assert relay.log_count("new child server 127.0.0.31") == 1
    [child] = [c for c in relay.children() if c["ip"] == "127.0.0.31"]
    assert (child["pod"], child["messages"]) == ("a", 3)


def test_a_compacted_resource_version_relists(tmp_path: Path, cluster: ApiServer) -> None:
    api = cluster.start()
    api.create_pod("shop", "a", node=NODE, ip="127.0.0.41")
    relay = Relay(tmp_path, api).start()
    try:
        relay.wait_log("pod watch: 1 pods on node node-a")
        api.stop()
        relay.wait_log("pod watch: API server not usable")
        api.start(bump_revision=3)  # etcd moved on and compacted: the watch's version is gone
        relay.wait_log("expired, relisting")
        wait_until(
            lambda: relay.metrics().get("plura_relay_kubernetes_relists_total", 0) >= 1,
            10,
            "relists",
        )
        api.create_pod("shop", "b", node=NODE, ip="127.0.0.42")
        # the new pod's ADDED event: watched again after the relist
        wait_until(lambda: relay.metrics()["plura_relay_kubernetes_pods"] == 2, 10, "pod b")
        relay.send("127.0.0.41")
        relay.send("127.0.0.42")
        relay.child("127.0.0.41", 1, pod="a")
        relay.child("127.0.0.42", 1, pod="b")
    finally:
        relay.stop()


def test_api_unreachable_at_start_gives_ip_children_then_pods(
    tmp_path: Path, cluster: ApiServer
) -> None:
    relay = Relay(tmp_path, cluster).start()  # nothing listens on the API server's port yet
    try:
        relay.send("127.0.0.51")
        ip_child = relay.child("127.0.0.51", 1)
        assert ip_child["pod_uid"] is None
        assert relay.ready()
        relay.wait_log("pod watch: API server not usable")
        time.sleep(2)
        assert relay.log_count("pod watch: API server not usable") == 1  # one per interval
        assert relay.metrics()["plura_relay_kubernetes_connected"] == 0
        cluster.start()
        cluster.create_pod("shop", "late", node=NODE, ip="127.0.0.51")
        relay.wait_log("pod watch: connected to the API server again", timeout_s=60)
        wait_until(lambda: relay.metrics()["plura_relay_kubernetes_pods"] == 1, 30, "the pod")
        relay.send("127.0.0.51")
        relay.child("127.0.0.51", 1, pod="late")
        assert [c["pod"] for c in relay.children() if c["ip"] == "127.0.0.51"] == ["", "late"]
    finally:
        relay.stop()
