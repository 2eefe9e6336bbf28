"""The watch of this node's pods, feeding a PodIndex; degrades, never blocks.

List `/api/v1/pods?fieldSelector=spec.nodeName=<node>`, then watch from the list's
resourceVersion with bookmarks; a watch the server ends is resumed from the last
resourceVersion seen (events or bookmarks), also after a reconnect; 410 Gone (that version was
compacted away) relists. Any other error (API unreachable, token expired, TLS, a dropped
connection) reconnects with exponential backoff, reloading the credentials (a rotated token is
picked up), and logs one WARNING per interval. Meanwhile the index keeps what it knew: sources
resolve to the pods they were, and the unknown ones stay plain IPs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable
from typing import Any

from relay.kube.index import PodIndex, pod_from_api

logger = logging.getLogger(__name__)

WARNING_INTERVAL_S = 60.0
LIST_TIMEOUT_S = 30.0
WATCH_TIMEOUT_S = 300.0
"""The server ends each watch after this long; it is resumed at once (a dead connection that
never says so is noticed by then too)."""


class _Gone(Exception):
    """410: the resourceVersion is too old."""


class PodWatch:
    def __init__(
        self,
        index: PodIndex,
        node_name: str,
        *,
        kubeconfig: str = "",
        label_keys: Iterable[str] = (),
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        warning_interval_s: float = WARNING_INTERVAL_S,
        watch_timeout_s: float = WATCH_TIMEOUT_S,
    ) -> None:
        self.index = index
        self.node_name = node_name
        self.kubeconfig = kubeconfig
        self.label_keys = list(label_keys)
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.warning_interval_s = warning_interval_s
        self.watch_timeout_s = watch_timeout_s
        self.resource_version: str | None = None
        self.connected = False
        self.events = 0
        self.relists = 0
        self.errors = 0
        self._warned_at = -math.inf
        self._suppressed = 0

    def stats(self) -> dict[str, float]:
        return {
            "kubernetes_connected": float(self.connected),
            "kubernetes_events": self.events,
            "kubernetes_relists": self.relists,
            "kubernetes_errors": self.errors,
            "kubernetes_pods": len(self.index),
        }

    async def run(self) -> None:
        """For ever (cancel to stop): keep the index current, expire deleted pods."""
        expiry = asyncio.get_running_loop().create_task(self._expire_forever())
        delay = self.backoff_initial_s
        try:
            while True:
                try:
                    await self._session()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # every failure of the API is survived, and said
                    self.errors += 1
                    if self.connected:  # it worked until now: retry soon
                        delay = self.backoff_initial_s
                    self.connected = False
                    self._warn(exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.backoff_max_s)
        finally:
            expiry.cancel()

    async def _expire_forever(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, min(self.index.grace_s / 4, 5.0)))
            self.index.expire(time.monotonic())

    async def _session(self) -> None:
        from kubernetes_asyncio import client

        async with await self._api_client() as api:
            v1 = client.CoreV1Api(api)
            if self.resource_version is None:
                await self._list(v1)
            while True:
                try:
                    await self._watch(v1)
                except _Gone:
                    self.relists += 1
                    logger.info("pod watch: resourceVersion %s expired, relisting",
                                self.resource_version)  # fmt: skip
                    await self._list(v1)

    async def _api_client(self) -> Any:
        from kubernetes_asyncio import client, config

        configuration = client.Configuration()
        if self.kubeconfig:
            await config.load_kube_config(
                config_file=self.kubeconfig, client_configuration=configuration
            )
        else:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return client.ApiClient(configuration)

    def _selector(self) -> str:
        return f"spec.nodeName={self.node_name}"

    async def _list(self, v1: Any) -> None:
        response = await v1.list_pod_for_all_namespaces(
            field_selector=self._selector(),
            _preload_content=False,
            _request_timeout=LIST_TIMEOUT_S,
        )
        body = await response.json()
        pods = [pod_from_api(item, self.label_keys) for item in body.get("items") or []]
        self.index.replace(pods, time.monotonic())
        self.resource_version = str(body["metadata"]["resourceVersion"])
        if not self.connected:
            logger.info("pod watch: %d pods on node %s", len(pods), self.node_name)
        self._connected()

    async def _watch(self, v1: Any) -> None:
        from kubernetes_asyncio import watch
        from kubernetes_asyncio.client.exceptions import ApiException

        async def start(**kwargs: Any) -> Any:
            response = await v1.list_pod_for_all_namespaces(**kwargs)
            self._connected()  # the server took the watch: connected, even before any event
            return response

        stream = watch.Watch(return_type="object")
        try:
            events = stream.stream(
                start,
                field_selector=self._selector(),
                resource_version=self.resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=int(self.watch_timeout_s),
                _request_timeout=self.watch_timeout_s + 30,
            )
            async for event in events:
                self._connected()
                self._apply(event["type"], event["raw_object"])
        except ApiException as exc:
            if exc.status == 410:
                raise _Gone() from exc
            raise
        finally:
            await stream.close()

    def _apply(self, kind: str, obj: dict[str, Any]) -> None:
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if version:
            self.resource_version = str(version)
        if kind == "BOOKMARK":
            return
        self.events += 1
        if kind in ("ADDED", "MODIFIED"):
            self.index.upsert(pod_from_api(obj, self.label_keys))
        elif kind == "DELETED":
            self.index.delete(str((obj.get("metadata") or {}).get("uid", "")), time.monotonic())

    def _connected(self) -> None:
        if not self.connected:
            self.connected = True
            if self._suppressed or self._warned_at > -math.inf:
                logger.info("pod watch: connected to the API server again")

    def _warn(self, exc: BaseException, delay: float) -> None:
        now = time.monotonic()
        if now - self._warned_at < self.warning_interval_s:
            self._suppressed += 1
            return
        suppressed = f" ({self._suppressed} similar suppressed)" if self._suppressed else ""
        self._warned_at, self._suppressed = now, 0
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        logger.warning(
            "pod watch: API server not usable (%s: %s); sources fall back to IPs, retrying in"
            " %.1fs%s", type(exc).__name__, reason[:300], delay, suppressed,
        )  # fmt: skip
