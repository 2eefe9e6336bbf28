"""Registry with pod identity: a child is (IP, pod UID) when the pod is known, else the IP."""

from __future__ import annotations

from pathlib import Path

from relay.children.registry import Registry, load_children
from relay.kube.index import Pod

T0 = 1_700_000_000.0


def pod(uid: str, name: str) -> Pod:
    return Pod(uid, "shop", name, "node-a", "Deployment", "web", ["nginx"], {"app": "web"})


def test_the_pod_behind_an_ip_changing_is_a_new_child(tmp_path: Path) -> None:
    behind: dict[str, Pod] = {"10.0.0.5": pod("u1", "web-a")}
    registry = Registry(tmp_path, resolve=behind.get)
    registry.observe("10.0.0.5", b"h", T0, 3)
    behind["10.0.0.5"] = pod("u2", "web-b")
    registry.observe("10.0.0.5", b"h", T0 + 10, 2)
    registry.observe("10.0.0.5", b"h", T0 + 11, 1)
    registry.observe("10.0.0.6", b"other", T0 + 12, 1)  # no pod: the IP
    registry.observe("10.0.0.5", b"h", T0 + 13, 1, via="10.9.9.9")  # another node's pod
    registry.save()
    got = {(c.ip, c.pod): c for c in load_children(tmp_path)}
    assert set(got) == {("10.0.0.5", "web-a"), ("10.0.0.5", "web-b"), ("10.0.0.6", ""),
                        ("10.0.0.5", "")}  # fmt: skip
    old, new = got["10.0.0.5", "web-a"], got["10.0.0.5", "web-b"]
    assert (old.first_seen, old.last_seen, old.messages) == (T0, T0, 3)
    assert (new.first_seen, new.last_seen, new.messages) == (T0 + 10, T0 + 11, 3)
    assert (new.pod_uid, new.namespace, new.workload, new.containers, new.labels) == (
        "u2", "shop", "web", ["nginx"], {"app": "web"})  # fmt: skip
    assert got["10.0.0.5", ""].via == "10.9.9.9"
    assert (registry.resolved, registry.unresolved) == (3, 2)
    # a restart keeps them apart (keyed by IP and UID), each announced once
    again = Registry(tmp_path, resolve=behind.get)
    again.observe("10.0.0.5", b"h", T0 + 20, 1)
    assert again.count == 4
    assert again.get("10.0.0.5|u2") is not None and again.get("10.0.0.5|u2").messages == 4  # type: ignore[union-attr]
