"""`/metrics` (Prometheus text format), `/healthz` and `/readyz` over HTTP, off the syslog port.

Nothing is counted here: the collector reads the counters the components already keep, at
scrape time, so the per-message path pays nothing for metrics.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import cast

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

Stats = Callable[[], dict[str, float]]
Readiness = Callable[[], tuple[bool, str]]

HEARTBEAT_S = 1.0
STALL_S = 5.0  # /healthz fails when the loop has not run the heartbeat for this long
_PREFIX = "plura_relay_"

# stat key -> (metric name, help, kind, labels)
_COUNTERS: dict[str, tuple[str, str, dict[str, str]]] = {
    "received_udp": ("messages_received", "Messages received", {"transport": "udp"}),
    "received_tcp": ("messages_received", "Messages received", {"transport": "tcp"}),
    "received_relp": ("messages_received", "Messages received", {"transport": "relp"}),
    "lines_written": ("lines_written", "Lines written to files", {}),
    "bytes_written": ("bytes_written", "Bytes written to files", {}),
    "udp_bytes": ("bytes_received", "Bytes received", {"transport": "udp"}),
    "tcp_bytes": ("bytes_received", "Bytes received", {"transport": "tcp"}),
    "relp_bytes": ("bytes_received", "Bytes received", {"transport": "relp"}),
    "general_parse": ("parse_fallbacks", "Messages that took the general parser", {}),
    "evictions": ("file_evictions", "Output files closed to stay within max_open_files", {}),
    "rotations": ("file_reopens", "Output files reopened after a rotation was noticed", {}),
    "torn_tails": (
        "file_torn_tails_cut",
        "Half-written last lines (a writer killed inside write) cut off when a file was reopened",
        {},
    ),
    "tcp_accepted": ("tcp_connections_accepted", "TCP connections accepted", {}),
    "tcp_framing_errors": ("tcp_framing_errors", "Octet-count framing errors (as imtcp)", {}),
    "write_failed": ("dropped", "Messages dropped", {"reason": "write_error"}),
    "udp_truncated": ("truncated", "Messages cut at max_message_bytes", {"transport": "udp"}),
    "tcp_truncated": ("truncated", "Messages cut at max_message_bytes", {"transport": "tcp"}),
    "relp_truncated": ("truncated", "Messages cut at max_message_bytes", {"transport": "relp"}),
    "tcp_discarded_bytes": ("discarded_bytes", "Bytes of oversize TCP frames not delivered", {}),
    "udp_kernel_drops": ("udp_receive_buffer_drops", "Datagrams dropped by the kernel", {}),
    "refused": ("dropped", "Messages dropped", {"reason": "source_not_allowed"}),
    "rate_limited": ("dropped", "Messages dropped", {"reason": "rate_limited"}),
    "tcp_refused_connections": ("tcp_connections_refused", "TCP connections refused", {}),
    "tcp_idle_closed": ("tcp_connections_idle_closed", "TCP connections closed when idle", {}),
    "tcp_refused_per_source": ("tcp_connections_refused_per_source",
                               "TCP connections refused over max_connections_per_source", {}),
    "tcp_resets": ("tcp_connections_reset", "TCP/TLS connections reset by the sender", {}),
    "tcp_rate_paused": ("tcp_rate_pauses", "Times a TCP sender was paused by the rate limit", {}),
    "origin_stamped": ("origin_stamped", "Messages filed under their [origip=] address", {}),
    "origin_invalid": ("origin_invalid", "[origip=] stamps without a valid address (ignored)", {}),
    "overflow": ("overflow", "Messages of sources beyond max_children (ceelog-overflow.log)", {}),
    "tls_handshake_failed": ("tls_handshakes_failed", "TLS handshakes that failed (logged)", {}),
    "tcp_relp_refused": ("tcp_relp_refused", "RELP clients refused on a plain syslog port "
                         "(logged once per source)", {}),
    "relp_accepted": ("relp_sessions_accepted", "RELP connections accepted", {}),
    "relp_acks": ("relp_acks", "RELP messages acknowledged (rsp 200 OK)", {}),
    "relp_protocol_errors": ("relp_protocol_errors", "RELP sessions ended by a protocol error "
                             "(logged)", {}),
    "relp_unsafe_closed": ("relp_sessions_closed_unacknowledged", "RELP sessions closed without "
                           "acks: their messages could not be written (resent)", {}),
    "relp_discarded_bytes": ("relp_discarded_bytes", "Bytes of oversize RELP messages cut off", {}),
    "relp_refused_connections": ("relp_connections_refused", "RELP connections refused (limits)",
                                 {}),
    "relp_idle_closed": ("relp_sessions_idle_closed", "RELP sessions closed when idle", {}),
    "relp_rate_paused": ("relp_rate_pauses", "Times a RELP session was paused by the rate limit",
                         {}),
    "kubernetes_events": ("kubernetes_events", "Pod watch events applied (bookmarks aside)", {}),
    "kubernetes_relists": ("kubernetes_relists", "Pod relists after 410 Gone", {}),
    "kubernetes_errors": ("kubernetes_errors", "Pod watch failures (each retried)", {}),
    "kubernetes_resolved": ("kubernetes_sources_resolved", "Source lookups that found a pod", {}),
    "kubernetes_unresolved": ("kubernetes_sources_unresolved", "Source lookups, no pod", {}),
}  # fmt: skip
_GAUGES: dict[str, tuple[str, str]] = {
    "open_files": ("open_files", "Output files open"),
    "buffered_bytes": ("buffered_bytes", "Bytes received and not yet written (queue depth)"),
    "tcp_buffered_bytes": ("tcp_buffered_bytes", "Bytes of partial TCP frames held"),
    "tcp_connections": ("tcp_connections", "Open TCP connections"),
    "relp_sessions": ("relp_sessions", "Open RELP sessions"),
    "relp_unacked": ("relp_unacked", "RELP messages received, acknowledgement not yet sent"),
    "children": ("children", "Child servers registered"),
    "children_active": ("children_active", "Child servers heard from recently"),
    "workers": ("workers", "Worker processes"),
    "kubernetes_connected": ("kubernetes_connected", "1 while the pod watch has the API server"),
    "kubernetes_pods": ("kubernetes_pods", "Pods indexed (deleted ones within their grace too)"),
}


# `forward_<key>|<target>` -> per-target metrics with a `target` label
_FORWARD_COUNTERS: dict[str, tuple[str, str]] = {
    "sent": ("forward_sent", "Messages written to the upstream (resends included)"),
    "sent_bytes": ("forward_sent_bytes", "Bytes written to the upstream"),
    "spooled": ("forward_spooled", "Messages appended to the target's disk spool"),
    "dropped_full": ("forward_dropped_spool_full", "Messages refused by a full spool"),
    "dropped_oldest": ("forward_dropped_oldest", "Spooled messages deleted to make room"),
    "spool_corrupt_bytes": ("forward_spool_corrupt_bytes", "Spool bytes set aside as corrupt"),
    "spool_problems": (
        "forward_spool_problems",
        "Spool damage skipped or parts in the way set aside (each logged)",
    ),
    "dropped_no_spool": (
        "forward_dropped_no_spool",
        "Messages offered to a target whose spool directory cannot be used",
    ),
    "connects": ("forward_connects", "Connections made to the upstream"),
    "connect_failures": ("forward_connect_failures", "Failed connection or TLS attempts"),
    "disconnects": ("forward_disconnects", "Upstream connections lost"),
    "truncated": ("forward_truncated", "Messages cut to fit a UDP datagram"),
    "relp_acked": ("forward_relp_acked", "RELP: messages the upstream answered 200"),
    "relp_resent": ("forward_relp_resent", "RELP: messages sent again after a session ended"),
    "relp_refused": ("forward_relp_refused", "RELP: messages the upstream answered with an error"),
    "relp_protocol_errors": (
        "forward_relp_protocol_errors",
        "RELP: answers that break the protocol (unknown transaction, unexpected command)",
    ),
}
_FORWARD_GAUGES: dict[str, tuple[str, str]] = {
    "spool_records": ("forward_spool_records", "Messages spooled, not yet confirmed delivered"),
    "spool_bytes": ("forward_spool_bytes", "Bytes spooled, not yet confirmed delivered"),
    "spool_max_bytes": ("forward_spool_max_bytes", "The spool's bound, max_spool_bytes"),
    "spool_oldest_age_s": ("forward_spool_oldest_age_seconds", "Age of the oldest spooled"),
    "connected": ("forward_connected", "Upstream connections up (per worker)"),
    "spool_unusable": ("forward_spool_unusable", "Spool directories that cannot be used"),
}


def _forward_metrics(values: dict[str, float]) -> Iterator[Metric]:
    families: dict[str, Metric] = {}
    for key, value in values.items():
        if not key.startswith("forward_") or "|" not in key:
            continue
        name, _, target = key[len("forward_") :].partition("|")
        if name in _FORWARD_COUNTERS:
            metric, text = _FORWARD_COUNTERS[name]
            family = families.setdefault(
                metric, CounterMetricFamily(_PREFIX + metric, text, labels=["target"])
            )
        elif name in _FORWARD_GAUGES:
            metric, text = _FORWARD_GAUGES[name]
            family = families.setdefault(
                metric, GaugeMetricFamily(_PREFIX + metric, text, labels=["target"])
            )
        else:
            continue
        cast(CounterMetricFamily, family).add_metric([target], value)
    yield from families.values()


def _route_metrics(values: dict[str, float]) -> Iterator[Metric]:
    """`route_dropped|<route>` -> plura_relay_route_dropped_total{route}."""
    keys = [key for key in values if key.startswith("route_dropped|")]
    if keys:
        family = CounterMetricFamily(
            _PREFIX + "route_dropped", "Messages a drop route took", labels=["route"]
        )
        for key in keys:
            family.add_metric([key.partition("|")[2]], values[key])
        yield family


class RelayCollector(Collector):
    def __init__(self, stats: Stats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        values = self._stats()
        counters: dict[str, CounterMetricFamily] = {}
        for key, (name, text, labels) in _COUNTERS.items():
            family = counters.get(name)
            if family is None:
                family = counters[name] = CounterMetricFamily(
                    _PREFIX + name, text, labels=sorted(labels)
                )
            if key in values:
                family.add_metric([labels[k] for k in sorted(labels)], values[key])
        families: dict[str, Metric] = dict(counters)
        for key, (name, text) in _GAUGES.items():
            if key in values:
                gauge = GaugeMetricFamily(_PREFIX + name, text)
                gauge.add_metric([], values[key])
                families[name] = gauge
        yield from families.values()
        yield from _forward_metrics(values)
        yield from _route_metrics(values)


class HealthServer:
    """A tiny HTTP/1.1 server on the event loop (GET only; one request per connection).

    `sock`: a listening socket bound by the caller (else it binds `address`); `metrics_only`:
    serve /metrics and nothing else (the listener Prometheus reaches over the network);
    `documents`: more paths, each answered with the JSON its function returns then.
    """

    def __init__(
        self,
        address: tuple[str, int],
        stats: Stats,
        ready: Readiness,
        *,
        sock: socket.socket | None = None,
        metrics_only: bool = False,
        documents: dict[str, Callable[[], bytes]] | None = None,
    ) -> None:
        self._address = address
        self._sock = sock
        self.metrics_only = metrics_only
        self._documents = documents or {}
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(RelayCollector(stats))
        self._ready = ready
        self._beat = time.monotonic()
        self._server: asyncio.Server | None = None
        self._heart: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> None:
        host, port = self._address
        if self._sock is not None:
            self._server = await asyncio.start_server(self._handle, sock=self._sock)
        else:
            self._server = await asyncio.start_server(self._handle, host or "0.0.0.0", port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._heart = asyncio.get_running_loop().create_task(self._heartbeat())
        what = "metrics" if self.metrics_only else "metrics and health"
        logger.info("%s on http://%s:%d/metrics", what, host or "0.0.0.0", self.port)

    async def stop(self) -> None:
        if self._heart is not None:
            self._heart.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _heartbeat(self) -> None:
        while True:
            self._beat = time.monotonic()
            await asyncio.sleep(HEARTBEAT_S)

    def respond(self, path: str) -> tuple[int, str, bytes]:
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4", generate_latest(self._registry)
        if self.metrics_only:
            return 404, "text/plain", b"not found: only /metrics here\n"
        if path == "/healthz":
            stalled = time.monotonic() - self._beat
            if stalled > STALL_S:
                return 503, "text/plain", f"event loop stalled for {stalled:.1f}s\n".encode()
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            ready, why = self._ready()
            return (200 if ready else 503), "text/plain", (why + "\n").encode()
        if path in self._documents:
            return 200, "application/json", self._documents[path]()
        return 404, "text/plain", b"not found: try /metrics, /healthz, /readyz\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                request = await reader.readuntil(b"\r\n\r\n")
            method, _, rest = request.decode("latin-1").partition(" ")
            path = rest.partition(" ")[0].partition("?")[0]
            status, kind, body = (
                self.respond(path) if method in ("GET", "HEAD") else (405, "text/plain", b"GET\n")
            )
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}.get(status, "Error")
            head = (
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + (body if method == "GET" else b""))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()
