"""The command line through click's CliRunner (and one real server for `send`)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from click.testing import CliRunner

from relay.children.registry import Registry
from relay.cli import main
from relay.forward.spool_disk import HEADER

ROOT = Path(__file__).resolve().parent.parent


def test_every_command_has_help() -> None:
    runner = CliRunner()
    for command in ([], ["serve"], ["check-config"], ["children"], ["send"]):
        result = runner.invoke(main, [*command, "--help"])
        assert result.exit_code == 0, result.output
        assert "Usage:" in result.output


def test_check_config_ok_and_error(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(main, ["check-config", str(ROOT / "conf" / "plura-relay.toml")])
    assert ok.exit_code == 0 and "OK" in ok.output
    bad = tmp_path / "bad.toml"
    bad.write_text("[children]\nhook_url = 5\n")
    result = runner.invoke(main, ["check-config", str(bad)])
    assert result.exit_code == 2
    assert "$.children.hook_url" in result.output


def test_serve_refuses_a_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("nope = 1\n")
    result = CliRunner().invoke(main, ["serve", "--config", str(bad)])
    assert result.exit_code == 2
    assert "unknown field `nope`" in result.output


def test_children_lists_the_registry(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.observe("10.244.2.7", b"web-1", 1_700_000_000.0)
    registry.observe("10.244.2.7", b"web-1", 1_700_000_001.0)
    registry.close()
    runner = CliRunner()
    as_json = runner.invoke(main, ["children", "--state-dir", str(tmp_path), "--json"])
    assert as_json.exit_code == 0
    [child] = json.loads(as_json.output)
    assert (child["ip"], child["hostname"], child["messages"]) == ("10.244.2.7", "web-1", 2)
    table = runner.invoke(main, ["children", "--state-dir", str(tmp_path)])
    assert "10.244.2.7" in table.output and "web-1" in table.output


def test_send_builds_rfc3164_and_rfc5424(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        port = receiver.getsockname()[1]
        runner = CliRunner()
        args = ["send", "--pri", "34", "--hostname", "pod-a", "--tag", "app", f"127.0.0.1:{port}"]
        assert runner.invoke(main, [*args, "hello"]).exit_code == 0
        assert (
            runner.invoke(main, [*args[:-1], "--rfc5424", f"127.0.0.1:{port}", "hi"]).exit_code == 0
        )
        first, second = receiver.recv(9000), receiver.recv(9000)
    assert first.startswith(b"<34>") and first.endswith(b" pod-a app: hello")
    assert second.startswith(b"<34>1 ") and second.endswith(b" pod-a app - - - hi")


def test_send_tcp_octet_counting() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        result = CliRunner().invoke(
            main,
            ["send", "--tcp", "--octet-counting", "--raw", f"127.0.0.1:{port}", "<13>a", "<13>bc"],
        )
        assert result.exit_code == 0, result.output
        conn, _ = server.accept()
        with conn:
            assert conn.recv(100) == b"5 <13>a6 <13>bc"


def test_rsyslog_conf_prints_the_pod_snippet() -> None:
    runner = CliRunner()
    udp = runner.invoke(main, ["rsyslog-conf", "--node-ip", "10.244.2.1"])
    tcp = runner.invoke(main, ["rsyslog-conf", "--node-ip", "10.244.2.1", "--tcp"])
    assert udp.exit_code == 0 and "*.info @10.244.2.1:514" in udp.output
    assert tcp.exit_code == 0 and 'TCP_Framing="octet-counted"' in tcp.output
    assert "imklog" not in [line.strip() for line in udp.output.splitlines() if "load" in line]
    bad = runner.invoke(main, ["rsyslog-conf", "--node-ip", "not an ip; rm -rf /"])
    assert bad.exit_code != 0


def test_spool_stats(tmp_path: Path) -> None:
    from relay.forward.spool import Spool
    from relay.forward.targets import spool_directory

    config = tmp_path / "relay.toml"
    config.write_text(
        f'state_dir = "{tmp_path}"\n'
        '[[forward]]\nname = "up"\nhost = "127.0.0.1"\n'
        '[[forward]]\nname = "idle"\nhost = "127.0.0.1"\n'
    )
    for worker, count in ((0, 3), (1, 2)):
        spool = Spool(spool_directory(str(tmp_path), "up", worker), max_bytes=1 << 20)
        for n in range(count):
            spool.append(b"<13>Jan  5 10:11:12 h app: %d" % n, 1_000.0 + n)
        spool.close()
    result = CliRunner().invoke(main, ["spool", "stats", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    up, idle = json.loads(result.output)
    assert (up["target"], up["records"], up["workers"]) == ("up", 5, 2)
    assert up["bytes"] == sum(
        HEADER.size + len(b"<13>Jan  5 10:11:12 h app: %d" % n) for n in (0, 1, 2, 0, 1)
    )
    assert up["oldest_age_s"] > 0
    assert (idle["target"], idle["records"], idle["oldest_age_s"]) == ("idle", 0, None)
    table = CliRunner().invoke(main, ["spool", "stats", "--config", str(config)])
    assert table.exit_code == 0 and "up" in table.output and "RECORDS" in table.output
