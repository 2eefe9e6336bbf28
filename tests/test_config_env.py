"""`${VAR}` in address keys (the downward API's status.hostIP as HOST_IP), and the pod CIDR as
the default of allowed_sources in that mode; every error one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from relay.cli import main
from relay.config import ConfigError, load_config

ENV = {"HOST_IP": "192.0.2.7", "POD_CIDR": "10.42.0.0/16"}

EXPANDED = [
    pytest.param({"listen.addresses": ["${HOST_IP}:514"], "listen.pod_cidr": "${POD_CIDR}"},
                 lambda c: (c.listen.addresses, c.listen.allowed_sources),
                 (["192.0.2.7:514"], ["10.42.0.0/16"]), id="host-ip-with-pod-cidr-env"),
    pytest.param({"listen.addresses": ["${HOST_IP}:514"],
                  "listen.pod_cidr": "10.42.0.0/16, fd00:42::/56"},
                 lambda c: c.listen.allowed_sources, ["10.42.0.0/16", "fd00:42::/56"],
                 id="pod-cidr-dual-stack"),
    pytest.param({"listen.addresses": ["${HOST_IP}:514"], "listen.pod_cidr": "${POD_CIDR}",
                  "listen.allowed_sources": ["10.42.3.0/24"]},
                 lambda c: c.listen.allowed_sources, ["10.42.3.0/24"],
                 id="allowed-sources-win"),
    pytest.param({"listen.addresses": ["${HOST_IP}:514", "127.0.0.1:514"],
                  "listen.allowed_sources": ["${POD_CIDR}"]},
                 lambda c: (c.listen.addresses, c.listen.allowed_sources),
                 (["192.0.2.7:514", "127.0.0.1:514"], ["10.42.0.0/16"]), id="allowed-from-env"),
    pytest.param({"metrics.scrape_listen": "${HOST_IP}:9515"},
                 lambda c: c.metrics.scrape_listen, "192.0.2.7:9515", id="scrape-listen"),
    pytest.param({"listen.addresses": ["0.0.0.0:514"]},
                 lambda c: c.listen.allowed_sources, [], id="no-env-no-default"),
]  # fmt: skip


@pytest.mark.parametrize("overrides, get, expected", EXPANDED)
def test_env_expansion(overrides: dict[str, object], get: object, expected: object) -> None:
    config = load_config(None, overrides, environ=ENV)
    assert callable(get)
    assert get(config) == expected


ERRORS = [
    pytest.param({"listen.addresses": ["${NODE_IP}:514"], "listen.pod_cidr": "10.0.0.0/8"},
                 "listen.addresses: ${NODE_IP} is not set in the environment", id="unset"),
    pytest.param({"listen.addresses": ["${HOST_IP}:514"]},
                 "listen.pod_cidr: expected the pod network's CIDR", id="no-pod-cidr"),
    pytest.param({"listen.addresses": ["${HOST_IP}:514"], "listen.pod_cidr": "${NOPE}"},
                 "listen.pod_cidr: ${NOPE} is not set", id="pod-cidr-unset"),
    pytest.param({"listen.addresses": ["${HOST_IP}:514"], "listen.pod_cidr": "10.42.0.0/33"},
                 "allowed_sources / trusted_sources", id="pod-cidr-bad"),
    pytest.param({"metrics.scrape_listen": "${EMPTY}:9515"},
                 "metrics.scrape_listen: ${EMPTY} is not set", id="empty-is-unset"),
    pytest.param({"metrics.scrape_listen": "node:9515"},
                 "metrics.scrape_listen: expected HOST:PORT", id="scrape-name"),
    pytest.param({"listen.addresses": ["$HOST_IP:514"]},
                 "listen.addresses: expected HOST:PORT", id="no-braces"),
]  # fmt: skip


@pytest.mark.parametrize("overrides, message", ERRORS)
def test_env_errors_name_the_key(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides, environ={**ENV, "EMPTY": ""})
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_check_config_unset_variable_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "relay.toml"
    path.write_text('[listen]\naddresses = ["${HOST_IP}:514"]\npod_cidr = "10.42.0.0/16"\n')
    monkeypatch.delenv("HOST_IP", raising=False)
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 2  # an operator error: exit 2, as every config error
    assert result.output == (
        f"Error: {path}: listen.addresses: ${{HOST_IP}} is not set in the environment\n"
    )
    monkeypatch.setenv("HOST_IP", "192.0.2.7")
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 0, result.output


def test_rsyslog_conf_from_env() -> None:
    result = CliRunner().invoke(main, ["rsyslog-conf", "--node-ip-env", "HOST_IP", "--tcp"])
    assert result.exit_code == 0, result.output
    assert 'target=`echo $HOST_IP` port="514" protocol="tcp"' in result.output
    both = CliRunner().invoke(main, ["rsyslog-conf", "--node-ip-env", "X", "--node-ip", "1.2.3.4"])
    assert both.exit_code == 2
    bad = CliRunner().invoke(main, ["rsyslog-conf", "--node-ip-env", "HOST IP"])
    assert bad.exit_code == 2 and "environment variable name" in bad.output
