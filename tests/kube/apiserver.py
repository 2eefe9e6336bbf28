"""The real test API server (k8s.io/apiserver on etcd, built by scripts/build-test-apiserver.sh)
as processes for tests: etcd, the API server (stopped and restarted on its port at will), pods
created and deleted over its HTTPS API, and a kubeconfig for plura-relay.

Missing build: a failure under CI=true (.ci/run builds it), else a skip saying how to build it.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import free_port

CACHE = Path(os.environ.get("PLURA_TEST_CACHE", "/var/cache/plura-relay"))
BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build-test-apiserver.sh"


def build_dir() -> Path:
    """The build to use, or fail (CI) / skip (elsewhere) with the reason."""
    candidates = []
    if os.environ.get("PLURA_TEST_APISERVER_DIR"):
        candidates.append(Path(os.environ["PLURA_TEST_APISERVER_DIR"]))
    pointer = CACHE / "test-apiserver.path"
    if pointer.is_file():
        candidates.append(Path(pointer.read_text().strip()))
    for candidate in candidates:
        if (candidate / "bin" / "test-apiserver").is_file() and (
            candidate / "bin" / "etcd"
        ).is_file():
            return candidate
    reason = f"no test API server built (run {BUILD_SCRIPT}; looked in {pointer})"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def _wait(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Etcd:
    def __init__(self, build: Path, tmp: Path) -> None:
        self.port = free_port()
        peer = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "etcd.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(build / "bin" / "etcd"), "--data-dir", str(tmp / "etcd-data"),
                 "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                 "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-cluster", f"default=http://127.0.0.1:{peer}"],
                stdout=log, stderr=log,
            )  # fmt: skip
        _wait(self._healthy, 30, f"etcd ({self.log})")

    def _healthy(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()[-2000:]
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                return bool(json.load(response).get("health") == "true")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)


class ApiServer:
    """The API server on 127.0.0.1:`port` (chosen once: a restart keeps it, as a real one)."""

    def __init__(self, build: Path, etcd: Etcd, tmp: Path) -> None:
        self.build, self.etcd, self.tmp = build, etcd, tmp
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._ssl = ssl.create_default_context()
        self._ssl.check_hostname = False
        self._ssl.verify_mode = ssl.CERT_NONE  # the server's certificate is self-signed

    def start(self, bump_revision: int = 0) -> ApiServer:
        self.starts += 1
        log = self.tmp / f"apiserver-{self.starts}.log"
        args = [str(self.build / "bin" / "test-apiserver"), "--etcd", self.etcd.url,
                "--port", str(self.port), "--cert-dir", str(self.tmp / "certs")]  # fmt: skip
        if bump_revision:
            args += ["--bump-revision", str(bump_revision)]
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=out)
        _wait(lambda: self._ready(log), 60, f"the API server ({log})")
        return self

    def _ready(self, log: Path) -> bool:
        assert self.proc is not None and self.proc.poll() is None, log.read_text()[-3000:]
        try:
            return self.request("GET", "/readyz", raw=True) == b"ok"
        except (OSError, urllib.error.HTTPError):
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def request(self, method: str, path: str, body: Any = None, raw: bool = False) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=10, context=self._ssl) as response:
            payload = response.read()
        return payload if raw else json.loads(payload)

    def create_pod(
        self,
        namespace: str,
        name: str,
        *,
        node: str,
        ip: str,
        start_time: str = "2026-12-02T10:00:00Z",
        deployment: str | None = None,
        host_network: bool = False,
        labels: dict[str, str] | None = None,
        containers: tuple[str, ...] = ("app",),
    ) -> str:
        """A running pod (status as the kubelet would have set it); returns its UID."""
        metadata: dict[str, Any] = {
            "name": name,
            "namespace": namespace,
            "labels": dict(labels or {}),
        }
        if deployment is not None:
            template_hash = "7d4b9c8f6d"
            metadata["labels"]["pod-template-hash"] = template_hash
            metadata["ownerReferences"] = [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"{deployment}-{template_hash}",
                "uid": "00000000-0000-0000-0000-000000000001", "controller": True,
            }]  # fmt: skip
        pod = {
            "apiVersion": "v1", "kind": "Pod", "metadata": metadata,
            "spec": {"nodeName": node, "hostNetwork": host_network,
                     "containers": [{"name": c, "image": "busybox"} for c in containers]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "startTime": start_time},
        }  # fmt: skip
        created = self.request("POST", f"/api/v1/namespaces/{namespace}/pods", pod)
        return str(created["metadata"]["uid"])

    def delete_pod(self, namespace: str, name: str) -> None:
        self.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}")

    def kubeconfig(self, path: Path) -> Path:
        """Anonymous access, as this test server allows everyone."""
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.url, "insecure-skip-tls-verify": True}}],
            "users": [{"name": "anonymous", "user": {}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "anonymous"}}],
        }))  # fmt: skip
        return path
