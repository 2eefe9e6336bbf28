"""`plura-relay children` beside a running server process: what the server has now, not what it
saved last (new children within save_interval_s, counters every 30 s)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relay.runtime.workers import REPORT_INTERVAL_S
from tests.integration.conftest import ServerProcess, free_port, send_udp, wait_for_lines

MESSAGE = b"<13>Jan  5 10:11:12 pod-7 app: hi"


def children_now(config: Path) -> dict[str, dict[str, object]]:
    listed = subprocess.run(
        [sys.executable, "-m", "relay", "children", "--config", str(config), "--json"],
        capture_output=True, text=True, timeout=20, check=True,
    )  # fmt: skip
    return {child["ip"]: child for child in json.loads(listed.stdout)}


@pytest.mark.timeout(60)
async def test_children_shows_a_new_source_at_once_with_current_counts(
    tmp_path: Path, workers: int
) -> None:
    metrics = f"127.0.0.1:{free_port()}"
    server = ServerProcess(tmp_path)
    server.args[server.args.index("--metrics") + 1] = metrics
    config = tmp_path / "relay.toml"  # what the operator's command reads: the same server
    config.write_text(f'state_dir = "{server.state_dir}"\n[metrics]\nlisten = "{metrics}"\n')
    # with workers, the supervisor's registry is as of the workers' last report
    settle_s = 0.0 if workers == 1 else 3 * REPORT_INTERVAL_S
    server.start()
    try:
        send_udp(server.port, [MESSAGE] * 3, source="127.0.0.7")
        assert len(await wait_for_lines(server.file("127.0.0.7"), 3)) == 3
        time.sleep(settle_s)
        child = children_now(config)["127.0.0.7"]
        assert (child["messages"], child["hostname"]) == (3, "pod-7")
        send_udp(server.port, [MESSAGE] * 5, source="127.0.0.7")
        assert len(await wait_for_lines(server.file("127.0.0.7"), 8)) == 8
        time.sleep(settle_s)
        assert children_now(config)["127.0.0.7"]["messages"] == 8
    finally:
        assert server.stop() == 0
    # no server answers: the registry saved at the stop
    assert children_now(config)["127.0.0.7"]["messages"] == 8


@pytest.mark.timeout(60)
async def test_children_of_another_state_dir_are_not_taken_from_a_running_server(
    tmp_path: Path,
) -> None:
    metrics = f"127.0.0.1:{free_port()}"
    (tmp_path / "a").mkdir()
    server = ServerProcess(tmp_path / "a")
    server.args[server.args.index("--metrics") + 1] = metrics
    elsewhere = tmp_path / "b" / "state"
    config = tmp_path / "other.toml"
    config.write_text(f'state_dir = "{elsewhere}"\n[metrics]\nlisten = "{metrics}"\n')
    server.start()
    try:
        send_udp(server.port, [MESSAGE], source="127.0.0.8")
        assert len(await wait_for_lines(server.file("127.0.0.8"), 1)) == 1
        time.sleep(3 * REPORT_INTERVAL_S)
        assert children_now(config) == {}
    finally:
        assert server.stop() == 0
