"""/metrics, /healthz and /readyz of a running server, read with prometheus-client's parser."""

from __future__ import annotations

import asyncio
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import lf, running_server, send_tcp, send_udp, wait_for_lines

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def _get(port: int, path: str) -> tuple[int, str]:
    # the server runs on this event loop: fetch from a thread
    return await asyncio.to_thread(_fetch, port, path)


def _fetch(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _samples(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def _scrape_until(
    port: int, key: tuple[str, tuple[tuple[str, str], ...]], value: float
) -> Samples:
    samples: Samples = {}
    for _ in range(100):
        samples = _samples((await _get(port, "/metrics"))[1])
        if samples.get(key) == value:
            return samples
        await asyncio.sleep(0.1)
    return samples


async def test_metrics_count_what_happened(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        port = srv.server.health.port
        send_udp(srv.port, [b"<13>Jan  5 10:11:12 h app: a", b"<13>odd one"], source="127.0.0.2")
        send_tcp(srv.port, lf([b"<13>Jan  5 10:11:12 h app: b"] * 3), source="127.0.0.3")
        await wait_for_lines(srv.file("127.0.0.3"), 3)
        await wait_for_lines(srv.file("127.0.0.2"), 2)
        samples = await _scrape_until(port, ("plura_relay_children", ()), 2)
    assert samples[("plura_relay_messages_received_total", (("transport", "udp"),))] == 2
    assert samples[("plura_relay_messages_received_total", (("transport", "tcp"),))] == 3
    assert samples[("plura_relay_lines_written_total", ())] == 5
    assert samples[("plura_relay_parse_fallbacks_total", ())] == 1
    assert samples[("plura_relay_children", ())] == 2
    assert samples[("plura_relay_children_active", ())] == 2
    assert samples[("plura_relay_dropped_total", (("reason", "write_error"),))] == 0
    assert ("plura_relay_udp_receive_buffer_drops_total", ()) in samples
    assert ("plura_relay_open_files", ()) in samples
    assert ("plura_relay_tcp_connections", ()) in samples


async def test_health_and_readiness(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        port = srv.server.health.port
        assert await _get(port, "/healthz") == (200, "ok\n")
        assert await _get(port, "/readyz") == (200, "ready\n")
        assert (await _get(port, "/nope"))[0] == 404
        # the log dir turns into something no one can write in (root included)
        shutil.rmtree(srv.log_dir)
        srv.log_dir.write_text("not a directory")
        status, text = await _get(port, "/readyz")
        assert status == 503 and "not writable" in text
        srv.log_dir.unlink()
        assert (await _get(port, "/readyz"))[0] == 200


def test_status_command_prints_a_summary(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from relay.cli import main
    from tests.integration.conftest import ServerProcess, free_port

    metrics_port = free_port()
    srv = ServerProcess(tmp_path)
    srv.args[srv.args.index("--metrics") + 1] = f"127.0.0.1:{metrics_port}"
    srv.start()
    try:
        send_udp(srv.port, [b"<13>Jan  5 10:11:12 h app: a"] * 3, source="127.0.0.2")
        result = None
        for _ in range(50):
            result = CliRunner().invoke(
                main, ["status", "--url", f"http://127.0.0.1:{metrics_port}"]
            )
            if "3 lines" in result.output:
                break
            __import__("time").sleep(0.1)
        assert result is not None and result.exit_code == 0, result.output
        lines = {
            k: v.strip() for k, _, v in (x.partition("  ") for x in result.output.splitlines())
        }
        assert lines["ready"] == "yes (ready)"
        assert lines["received"] == "3 messages (udp 3, tcp 0)"
        assert lines["children"] == "1 (1 active)"
    finally:
        assert srv.stop() == 0


async def test_forward_metrics_and_status(tmp_path: Path) -> None:
    from relay.ops.status import Status, format_status

    async with (
        running_server(tmp_path / "b") as b,
        running_server(
            tmp_path / "a",
            {
                "forward": [
                    {"name": "up", "host": "127.0.0.1", "port": b.port, "confirm_after_s": 0.1}
                ]
            },
        ) as a,
    ):
        send_tcp(a.port, lf([b"<13>Jan  5 10:11:12 h app: m"] * 5), source="127.0.0.2")
        await wait_for_lines(b.file("127.0.0.1"), 5)
        port = a.server.health.port
        up = (("target", "up"),)
        await _scrape_until(port, ("plura_relay_forward_sent_total", up), 5)  # (workers report)
        samples = await _scrape_until(port, ("plura_relay_forward_spool_records", up), 0)
        text = (await _get(port, "/metrics"))[1]
    assert samples[("plura_relay_forward_sent_total", up)] == 5
    assert samples[("plura_relay_forward_spooled_total", up)] == 5
    assert samples[("plura_relay_forward_connected", up)] >= 1
    assert samples[("plura_relay_forward_dropped_spool_full_total", up)] == 0
    summary = format_status(Status(True, "ready", _samples(text)))
    [line] = [line for line in summary.splitlines() if line.startswith("forward up ")]
    assert line.split(None, 2)[2].startswith("connected, sent 5, spooled 0 (0.0 MB")
