"""`[kubernetes]` through `plura-relay check-config`: each mistake is one line naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CASES = [
    pytest.param('[kubernetes]\nenabled = true\nnode_name = "n"\nkubeconfig = "{tmp}/missing"\n',
                 {}, "kubernetes.kubeconfig: {tmp}/missing does not exist", id="missing-kubeconfig"),
    pytest.param('[kubernetes]\nenabled = true\nkubeconfig = "{tmp}/kc"\n', {},
                 "kubernetes.node_name: expected this node's name", id="no-node-name"),
    pytest.param("[kubernetes]\ndeleted_pod_grace_s = -1\n", {}, "kubernetes.deleted_pod_grace_s", id="grace"),
    pytest.param("[kubernetes]\nlabel = []\n", {}, "unknown field `label` - at `$.kubernetes`", id="unknown-key"),
    pytest.param('[kubernetes]\nenabled = true\nkubeconfig = "{tmp}/kc"\nlabels = [""]\n',
                 {"NODE_NAME": "n"}, "kubernetes.labels: expected label keys", id="empty-label"),
    pytest.param('[[route]]\nname = "r"\nfile = "{{node}}.log"\n', {},
                 "route[0].file: unknown placeholder in '{{node}}.log', expecting {{ip}}, {{namespace}}, {{pod}}, {{workload}}", id="route-placeholder"),
    pytest.param('[[route]]\nname = "r"\nfile = "{{pod!r}}.log"\n', {},
                 "route[0].file: unknown placeholder in '{{pod!r}}.log'", id="route-conversion"),
]  # fmt: skip


@pytest.mark.parametrize(("toml", "env", "error"), CASES)
def test_check_config_errors(tmp_path: Path, toml: str, env: dict[str, str], error: str) -> None:
    (tmp_path / "kc").write_text("apiVersion: v1\nkind: Config\n")
    path = tmp_path / "c.toml"
    path.write_text(toml.format(tmp=tmp_path))
    environ = {"PATH": "/usr/bin:/bin", **env}
    result = subprocess.run([sys.executable, "-m", "relay", "check-config", str(path)],
                            capture_output=True, text=True, env=environ)  # fmt: skip
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert error.format(tmp=tmp_path) in lines[0]


def test_check_config_accepts_the_watch_with_a_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "kc").write_text("apiVersion: v1\nkind: Config\n")
    path = tmp_path / "c.toml"
    path.write_text(f'[kubernetes]\nenabled = true\nkubeconfig = "{tmp_path}/kc"\nlabels = ["app"]\n'
                    '[[route]]\nname = "r"\nfile = "pods/{namespace}/{pod}-{ip}.log"\n')  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "relay", "check-config", str(path)],
                            capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "NODE_NAME": "n"})  # fmt: skip
    assert result.returncode == 0, result.stderr
