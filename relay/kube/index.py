"""The pod-IP index of this node's pods, pure (no I/O; the clock is passed in).

Rules (as OpenTelemetry's k8sattributes keeps its index right):
- host-network pods are never indexed: their IP is the node's, shared by all of them;
- when two pods claim an IP, the one with the later `status.startTime` wins (on a tie, the one
  seen last);
- a deleted pod stays resolvable for `grace_s` (late messages still find it), then it is gone,
  unless a newer pod took the IP before (then the newer one wins at once, by the rule above).
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec


class Pod(msgspec.Struct, frozen=True):
    """What a child records of the pod behind it."""

    uid: str
    namespace: str
    name: str
    node: str
    workload_kind: str
    """The controlling owner's kind (`Deployment` for a ReplicaSet of one), or `Pod`."""
    workload: str
    containers: list[str]
    labels: dict[str, str]
    ips: list[str] = msgspec.field(default_factory=list)
    host_network: bool = False
    start_time: float = 0.0
    """`status.startTime` (else `metadata.creationTimestamp`), seconds since the epoch."""


def _timestamp(text: object) -> float:
    if not isinstance(text, str) or not text:
        return 0.0
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def workload_of(metadata: Mapping[str, Any]) -> tuple[str, str]:
    """(kind, name) of the controlling owner; a ReplicaSet made by a Deployment is named
    `<deployment>-<pod-template-hash>`, so its Deployment is that name without the hash."""
    owners = metadata.get("ownerReferences") or []
    owner = next((o for o in owners if o.get("controller")), owners[0] if owners else None)
    if owner is None:
        return "Pod", str(metadata.get("name", ""))
    kind, name = str(owner.get("kind", "")), str(owner.get("name", ""))
    template_hash = (metadata.get("labels") or {}).get("pod-template-hash")
    if kind == "ReplicaSet" and template_hash and name.endswith("-" + template_hash):
        return "Deployment", name[: -len(template_hash) - 1]
    return kind, name


def pod_from_api(obj: Mapping[str, Any], label_keys: Iterable[str] = ()) -> Pod:
    """A core/v1 Pod as the API serves it (JSON decoded) -> Pod."""
    metadata = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    labels = metadata.get("labels") or {}
    ips = [str(p["ip"]) for p in status.get("podIPs") or [] if p.get("ip")]
    if not ips and status.get("podIP"):
        ips = [str(status["podIP"])]
    kind, workload = workload_of(metadata)
    return Pod(
        uid=str(metadata.get("uid", "")),
        namespace=str(metadata.get("namespace", "")),
        name=str(metadata.get("name", "")),
        node=str(spec.get("nodeName", "")),
        workload_kind=kind,
        workload=workload,
        containers=[str(c.get("name", "")) for c in spec.get("containers") or []],
        labels={k: str(labels[k]) for k in label_keys if k in labels},
        ips=ips,
        host_network=bool(spec.get("hostNetwork", False)),
        start_time=_timestamp(status.get("startTime"))
        or _timestamp(metadata.get("creationTimestamp")),
    )


class PodIndex:
    """IP -> the pod behind it now. `resolve` is a dict lookup (it runs once per source batch)."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self._pods: dict[str, Pod] = {}  # uid -> pod
        self._deleted: dict[str, float] = {}  # uid -> when it was deleted
        self._claims: dict[str, set[str]] = {}  # ip -> uids claiming it
        self._seen: dict[str, int] = {}  # uid -> order of its last event (ties of startTime)
        self._winner: dict[str, Pod] = {}  # ip -> resolved pod
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._pods)

    def resolve(self, ip: str) -> Pod | None:
        return self._winner.get(ip)

    def upsert(self, pod: Pod) -> None:
        """ADDED or MODIFIED (a pod deleted and seen again is live again)."""
        old = self._pods.get(pod.uid)
        self._pods[pod.uid] = pod
        self._deleted.pop(pod.uid, None)
        self._seen[pod.uid] = next(self._order)
        touched = set(old.ips) if old is not None and not old.host_network else set()
        if not pod.host_network:
            touched |= set(pod.ips)
        for ip in touched:
            claims = self._claims.setdefault(ip, set())
            if ip in pod.ips and not pod.host_network:
                claims.add(pod.uid)
            else:
                claims.discard(pod.uid)
            self._elect(ip)

    def delete(self, uid: str, now: float) -> None:
        """DELETED: resolvable for grace_s more."""
        if uid in self._pods and uid not in self._deleted:
            self._deleted[uid] = now

    def replace(self, pods: Iterable[Pod], now: float) -> None:
        """A relist: the pods that exist now; the others were deleted meanwhile."""
        listed = {pod.uid: pod for pod in pods}
        for uid in list(self._pods):
            if uid not in listed:
                self.delete(uid, now)
        for pod in listed.values():
            self.upsert(pod)

    def expire(self, now: float) -> None:
        """Forget pods deleted more than grace_s ago."""
        for uid, deleted_at in list(self._deleted.items()):
            if now - deleted_at >= self.grace_s:
                self._forget(uid)

    def _forget(self, uid: str) -> None:
        pod = self._pods.pop(uid)
        self._deleted.pop(uid, None)
        self._seen.pop(uid, None)
        for ip in pod.ips:
            claims = self._claims.get(ip)
            if claims is not None:
                claims.discard(uid)
                self._elect(ip)

    def _elect(self, ip: str) -> None:
        claims = self._claims.get(ip)
        if not claims:
            self._claims.pop(ip, None)
            self._winner.pop(ip, None)
            return
        uid = max(claims, key=lambda u: (self._pods[u].start_time, self._seen[u]))
        self._winner[ip] = self._pods[uid]
