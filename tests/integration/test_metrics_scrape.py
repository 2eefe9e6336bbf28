"""The Prometheus side: `metrics.scrape_listen` serves /metrics and nothing else, and every
metric and label the monitoring overlay's alert rules use is one a running server exports."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.conftest import K8S, missing
from tests.integration.conftest import running_server, send_tcp, send_udp, wait_for_lines
from tests.integration.test_metrics import _get

try:
    import promql_parser
    import yaml
except ImportError:
    missing("promql-parser / PyYAML", "pip install promql-parser kubernetes-validate")

RULES = K8S / "overlays" / "monitoring" / "prometheusrule.yaml"
ALERTS = {
    "PluraRelayUdpKernelDrops", "PluraRelayWriteErrors", "PluraRelaySpoolNearlyFull",
    "PluraRelayForwardTargetDown", "PluraRelayNoMessages",
}  # fmt: skip


async def test_scrape_listener_serves_metrics_only(tmp_path: Path) -> None:
    async with running_server(tmp_path, {"metrics.scrape_listen": "127.0.0.1:0"}) as srv:
        assert srv.server.scrape is not None and srv.server.health is not None
        scrape, health = srv.server.scrape.port, srv.server.health.port
        assert scrape != health
        status, text = await _get(scrape, "/metrics")
        assert status == 200 and "plura_relay_messages_received_total" in text
        for path in ("/healthz", "/readyz", "/"):
            assert (await _get(scrape, path))[0] == 404
        assert await _get(health, "/healthz") == (200, "ok\n")


def _selectors(node: Any) -> list[Any]:
    """Every vector selector in a parsed PromQL expression."""
    if type(node).__name__ == "VectorSelector":
        return [node]
    found = []
    for attribute in ("lhs", "rhs", "expr", "args", "param", "vector_selector"):
        child = getattr(node, attribute, None)
        for item in child if isinstance(child, list) else [child]:
            if item is not None and not isinstance(item, str | int | float):
                found += _selectors(item)
    return found


def rule_selectors() -> dict[str, list[tuple[str, dict[str, str]]]]:
    """alert -> [(metric name, {label: value} of its = matchers)]."""
    [doc] = [d for d in yaml.safe_load_all(RULES.read_text()) if d]
    out = {}
    for group in doc["spec"]["groups"]:
        for rule in group["rules"]:
            selectors = _selectors(promql_parser.parse(rule["expr"]))
            out[rule["alert"]] = [
                (
                    s.name,
                    {m.name: m.value for m in s.matchers.matchers if str(m.op) == "MatchOp.Equal"},
                )
                for s in selectors
            ]
    return out


def test_rule_parser_finds_every_selector() -> None:
    found = rule_selectors()
    assert set(found) == ALERTS
    assert found["PluraRelaySpoolNearlyFull"] == [
        ("plura_relay_forward_spool_bytes", {}), ("plura_relay_forward_spool_max_bytes", {}),
    ]  # fmt: skip
    assert found["PluraRelayWriteErrors"] == [
        ("plura_relay_dropped_total", {"reason": "write_error"})
    ]


@pytest.mark.timeout(60)
async def test_alert_rules_use_exported_metrics(tmp_path: Path) -> None:
    # a forward target (nothing listens there) so that the per-target metrics exist too
    overrides = {"forward": [{"name": "up", "host": "127.0.0.1", "port": 9}]}
    async with running_server(tmp_path, overrides) as srv:
        assert srv.server.health is not None
        send_udp(srv.port, [b"<13>Jan  5 10:11:12 h app: a"])
        send_tcp(srv.port, b"<13>Jan  5 10:11:12 h app: b\n")
        await wait_for_lines(srv.file("127.0.0.1"), 2)
        await asyncio.sleep(0.2)
        _, text = await _get(srv.server.health.port, "/metrics")
    exported: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            exported.setdefault(sample.name, []).append(sample.labels)
    for alert, selectors in rule_selectors().items():
        for name, labels in selectors:
            assert name in exported, f"{alert}: {name} is not exported"
            assert any(labels.items() <= sample.items() for sample in exported[name]), (
                f"{alert}: {name}{labels} matches no exported sample"
            )
