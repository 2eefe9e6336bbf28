"""rsyslog.d/pod-relp.conf and `plura-relay rsyslog-conf --relp`: omrelp with a disk-assisted
queue, exactly what relay.node.podconf renders, accepted by `rsyslogd -N1` (which has teeth),
and a real rsyslogd with it delivers to plura-relay's RELP listener (the kill proof:
tests/differential/test_relp_kill.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from relay.cli import main
from relay.node.podconf import NODE_IP_PLACEHOLDER, pod_snippet, pod_snippet_from_env
from tests.deploy.conftest import RSYSLOG_D
from tests.deploy.test_rsyslog_conf import validate

OMRELP = Path("/usr/lib/x86_64-linux-gnu/rsyslog/omrelp.so")


def test_pod_relp_file_is_what_pod_snippet_renders() -> None:
    assert (RSYSLOG_D / "pod-relp.conf").read_text() == pod_snippet(NODE_IP_PLACEHOLDER, relp=True)


def test_relp_snippet_has_omrelp_a_disk_queue_and_port_2514() -> None:
    text = pod_snippet("10.244.2.1", relp=True)
    for setting in (
        'module(load="omrelp")',
        'type="omrelp" target="10.244.2.1" port="2514"',
        'queue.type="LinkedList" queue.filename="plura-relay-relp"',
        'queue.maxDiskSpace="100m" queue.saveOnShutdown="on"',
        'action.resumeRetryCount="-1"',
    ):
        assert setting in text
    assert 'port="2600"' in pod_snippet("10.244.2.1", relp=True, port=2600)
    env = pod_snippet_from_env("HOST_IP", relp=True)
    assert 'type="omrelp" target=`echo $HOST_IP` port="2514"' in env and "omfwd" not in env


def need_omrelp() -> None:
    if not OMRELP.exists():
        pytest.skip("rsyslog's omrelp not installed: apt-get install rsyslog-relp")


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(
            lambda: (RSYSLOG_D / "pod-relp.conf").read_text().replace("NODE_IP", "10.244.2.1"),
            id="file",
        ),
        pytest.param(lambda: pod_snippet("fd00:10:244::1", relp=True), id="v6"),
    ],
)
def test_rsyslogd_accepts_the_relp_snippet(rsyslogd: str, text: object, tmp_path: Path) -> None:
    need_omrelp()
    assert callable(text)
    result = validate(rsyslogd, text(), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "error" not in result.stderr.lower(), result.stderr


def test_rsyslogd_check_of_the_relp_snippet_has_teeth(rsyslogd: str, tmp_path: Path) -> None:
    need_omrelp()
    text = pod_snippet("10.244.2.1", relp=True).replace('port="2514"', 'portt="2514"')
    result = validate(rsyslogd, text, tmp_path)
    assert result.returncode != 0 and "portt" in result.stderr


def test_cli_prints_the_relp_snippet() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["rsyslog-conf", "--node-ip", "10.244.2.1", "--relp"])
    assert result.exit_code == 0 and result.output == pod_snippet("10.244.2.1", relp=True)
    both = runner.invoke(main, ["rsyslog-conf", "--node-ip", "10.244.2.1", "--relp", "--tcp"])
    assert both.exit_code == 2 and "one of --tcp and --relp" in both.output
    tcp = runner.invoke(main, ["rsyslog-conf", "--node-ip", "10.244.2.1", "--tcp"])
    assert 'port="514"' in tcp.output
