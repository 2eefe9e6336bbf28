"""relay.kube.index: the pod-IP index's rules, as tables of events and what an IP resolves to."""

from __future__ import annotations

from typing import Any

import pytest

from relay.kube.index import Pod, PodIndex, pod_from_api, workload_of

GRACE = 120.0


def pod(uid: str, ip: str = "10.244.1.5", start: float = 100.0, host: bool = False) -> Pod:
    return Pod(uid, "shop", f"pod-{uid}", "node-a", "Pod", f"pod-{uid}", ["c"], {},
               ips=[ip] if ip else [], host_network=host, start_time=start)  # fmt: skip


# (events, ip, uid it resolves to or None); an event: ("up", pod) | ("del", uid, t) | ("expire", t)
# | ("relist", [pods], t)
RULES: list[Any] = [
    pytest.param([("up", pod("a"))], "10.244.1.5", "a", id="added"),
    pytest.param([("up", pod("a"))], "10.244.1.6", None, id="other-ip"),
    pytest.param([("up", pod("a", host=True))], "10.244.1.5", None, id="host-network-never"),
    pytest.param([("up", pod("a")), ("up", pod("a", host=True))], "10.244.1.5", None,
                 id="turned-host-network"),
    pytest.param([("up", pod("a", ip=""))], "10.244.1.5", None, id="pending-no-ip"),
    pytest.param([("up", pod("a", ip="")), ("up", pod("a"))], "10.244.1.5", "a", id="got-ip"),
    pytest.param([("up", pod("a", start=200)), ("up", pod("b", start=100))], "10.244.1.5", "a",
                 id="later-start-wins-even-if-seen-first"),
    pytest.param([("up", pod("a", start=100)), ("up", pod("b", start=200))], "10.244.1.5", "b",
                 id="later-start-wins"),
    pytest.param([("up", pod("a", start=100)), ("up", pod("b", start=100))], "10.244.1.5", "b",
                 id="tie-last-seen-wins"),
    pytest.param([("up", pod("a")), ("del", "a", 0.0)], "10.244.1.5", "a",
                 id="deleted-still-resolves-in-grace"),
    pytest.param([("up", pod("a")), ("del", "a", 0.0), ("expire", GRACE - 1)], "10.244.1.5", "a",
                 id="just-before-grace"),
    pytest.param([("up", pod("a")), ("del", "a", 0.0), ("expire", GRACE)], "10.244.1.5", None,
                 id="gone-after-grace"),
    pytest.param([("up", pod("a", start=100)), ("del", "a", 0.0), ("up", pod("b", start=200))],
                 "10.244.1.5", "b", id="newer-pod-takes-ip-within-grace"),
    pytest.param([("up", pod("a", start=100)), ("del", "a", 0.0), ("up", pod("b", start=200)),
                  ("expire", GRACE)], "10.244.1.5", "b", id="expiry-keeps-newer"),
    pytest.param([("up", pod("a", start=100)), ("up", pod("b", start=200)), ("del", "b", 0.0),
                  ("expire", GRACE)], "10.244.1.5", "a", id="older-live-claimant-again"),
    pytest.param([("up", pod("a")), ("up", pod("a", ip="10.244.1.9"))], "10.244.1.5", None,
                 id="ip-changed-old-gone"),
    pytest.param([("up", pod("a")), ("up", pod("a", ip="10.244.1.9"))], "10.244.1.9", "a",
                 id="ip-changed-new"),
    pytest.param([("up", pod("a")), ("relist", [pod("b", start=200)], 0.0)], "10.244.1.5", "b",
                 id="relist-new-pod"),
    pytest.param([("up", pod("a")), ("relist", [], 0.0)], "10.244.1.5", "a",
                 id="relist-missing-is-deleted-with-grace"),
    pytest.param([("up", pod("a")), ("relist", [], 0.0), ("expire", GRACE)], "10.244.1.5", None,
                 id="relist-missing-then-gone"),
    pytest.param([("up", pod("a")), ("del", "a", 0.0), ("up", pod("a")), ("expire", GRACE)],
                 "10.244.1.5", "a", id="seen-again-after-delete-is-live"),
]  # fmt: skip


@pytest.mark.parametrize(("events", "ip", "expected"), RULES)
def test_index_rules(events: list[Any], ip: str, expected: str | None) -> None:
    index = PodIndex(GRACE)
    for event in events:
        if event[0] == "up":
            index.upsert(event[1])
        elif event[0] == "del":
            index.delete(event[1], event[2])
        elif event[0] == "relist":
            index.replace(event[1], event[2])
        else:
            index.expire(event[1])
    found = index.resolve(ip)
    assert (found.uid if found else None) == expected


def test_expired_pods_are_forgotten_entirely() -> None:
    index = PodIndex(GRACE)
    index.upsert(pod("a"))
    index.delete("a", 0.0)
    index.expire(GRACE)
    assert len(index) == 0


def _meta(owner_kind: str | None, owner: str = "", hash_: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "web-7d4b9c8f6d-abcde", "labels": {}}
    if hash_:
        meta["labels"]["pod-template-hash"] = hash_
    if owner_kind:
        meta["ownerReferences"] = [{"kind": owner_kind, "name": owner, "controller": True}]
    return meta


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        (_meta("ReplicaSet", "web-7d4b9c8f6d", "7d4b9c8f6d"), ("Deployment", "web")),
        (_meta("ReplicaSet", "web-7d4b9c8f6d", None), ("ReplicaSet", "web-7d4b9c8f6d")),
        (_meta("ReplicaSet", "standalone", "7d4b9c8f6d"), ("ReplicaSet", "standalone")),
        (_meta("StatefulSet", "db"), ("StatefulSet", "db")),
        (_meta("DaemonSet", "agent"), ("DaemonSet", "agent")),
        (_meta("Job", "backup-28120"), ("Job", "backup-28120")),
        (_meta(None), ("Pod", "web-7d4b9c8f6d-abcde")),
    ],
    ids=["deployment", "rs-no-hash", "rs-other-name", "statefulset", "daemonset", "job", "bare"],
)
def test_workload(metadata: dict[str, Any], expected: tuple[str, str]) -> None:
    assert workload_of(metadata) == expected


def test_pod_from_api() -> None:
    obj = {
        "metadata": {"name": "web-1", "namespace": "shop", "uid": "u1",
                     "labels": {"app": "web", "tier": "front", "pod-template-hash": "h"},
                     "ownerReferences": [{"kind": "ReplicaSet", "name": "web-h", "controller": True}],
                     "creationTimestamp": "2026-12-01T00:00:00Z"},
        "spec": {"nodeName": "node-a", "containers": [{"name": "nginx"}, {"name": "rsyslog"}]},
        "status": {"podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}, {"ip": "fd00::5"}],
                   "startTime": "2026-12-02T10:00:00Z"},
    }  # fmt: skip
    p = pod_from_api(obj, ["app", "missing"])
    assert (p.uid, p.namespace, p.name, p.node) == ("u1", "shop", "web-1", "node-a")
    assert (p.workload_kind, p.workload) == ("Deployment", "web")
    assert p.containers == ["nginx", "rsyslog"]
    assert p.labels == {"app": "web"}
    assert p.ips == ["10.244.1.5", "fd00::5"]
    assert p.start_time == 1796205600.0
    assert not p.host_network
