"""`plura-relay status`: a running server's /metrics and /readyz, summed up on one screen."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import NamedTuple

from prometheus_client.parser import text_string_to_metric_families

TIMEOUT_S = 5.0


class Status(NamedTuple):
    ready: bool
    readiness: str
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]


def fetch_status(url: str) -> Status:
    metrics = _get(url.rstrip("/") + "/metrics")[1]
    code, readiness = _get(url.rstrip("/") + "/readyz")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
    }
    return Status(code == 200, readiness.strip(), samples)


def fetch_document(url: str, timeout_s: float = TIMEOUT_S) -> bytes | None:
    """The body of a 200 answer at `url`, or None when no server answers it so (nothing
    listening, a server without that path, a timeout)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bytes(response.read()) if response.status == 200 else None
    except (OSError, ValueError):  # URLError and HTTPError are OSErrors
        return None


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def format_status(status: Status) -> str:
    def total(name: str, **labels: str) -> float:
        return sum(
            v
            for (n, ls), v in status.samples.items()
            if n == f"plura_relay_{name}" and all((k, x) in ls for k, x in labels.items())
        )

    dropped = {
        dict(ls).get("reason", "?"): v
        for (n, ls), v in status.samples.items()
        if n == "plura_relay_dropped_total" and v
    }
    rows = [
        ("ready", f"{'yes' if status.ready else 'NO'} ({status.readiness})"),
        ("workers", f"{total('workers'):.0f}"),
        ("received", f"{total('messages_received_total'):,.0f} messages "
                     f"(udp {total('messages_received_total', transport='udp'):,.0f}, "
                     f"tcp {total('messages_received_total', transport='tcp'):,.0f})"),
        ("written", f"{total('lines_written_total'):,.0f} lines, "
                    f"{total('bytes_written_total') / 1e6:,.1f} MB"),
        ("dropped", ", ".join(f"{k} {v:,.0f}" for k, v in sorted(dropped.items())) or "none"),
        ("truncated", f"{total('truncated_total'):,.0f}"),
        ("kernel UDP drops", f"{total('udp_receive_buffer_drops_total'):,.0f}"),
        ("parse fallbacks", f"{total('parse_fallbacks_total'):,.0f}"),
        ("children", f"{total('children'):,.0f} ({total('children_active'):,.0f} active)"),
        ("open files", f"{total('open_files'):,.0f} "
                       f"(evictions {total('file_evictions_total'):,.0f})"),
        ("tcp connections", f"{total('tcp_connections'):,.0f} open, "
                            f"{total('tcp_connections_accepted_total'):,.0f} accepted"),
        ("buffered", f"{total('buffered_bytes'):,.0f} bytes"),
    ]  # fmt: skip
    targets = sorted(
        {dict(ls)["target"] for (n, ls), _ in status.samples.items() if n.startswith(
            "plura_relay_forward_") and "target" in dict(ls)}
    )  # fmt: skip
    for target in targets:
        dropped_here = total("forward_dropped_spool_full_total", target=target) + total(
            "forward_dropped_oldest_total", target=target
        )
        rows.append((
            f"forward {target}",
            f"{'connected' if total('forward_connected', target=target) else 'NOT connected'}, "
            f"sent {total('forward_sent_total', target=target):,.0f}, "
            f"spooled {total('forward_spool_records', target=target):,.0f} "
            f"({total('forward_spool_bytes', target=target) / 1e6:,.1f} MB, oldest "
            f"{total('forward_spool_oldest_age_seconds', target=target):,.0f}s), "
            f"dropped {dropped_here:,.0f}",
        ))  # fmt: skip
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
