"""Config loading: defaults < file < overrides, typos and bad values rejected with the key."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from relay.config import (
    ChildrenConfig,
    Config,
    ConfigError,
    Forward,
    ForwardTls,
    HostnameConfig,
    ListenConfig,
    ListenTls,
    LogConfig,
    MetricsConfig,
    OriginConfig,
    OutputConfig,
    ParseConfig,
    load_config,
    parse_address,
)

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_config_is_production_defaults() -> None:
    """conf/plura-relay.toml: the built-in defaults except where a node needs otherwise."""
    shipped = load_config(ROOT / "conf" / "plura-relay.toml")
    assert shipped.listen.addresses == ["auto:514"]
    assert shipped.listen.interface == "cni0"
    assert shipped.output.log_dir == "/var/log/plura"
    assert shipped.state_dir == "/var/lib/plura-relay"
    [route] = shipped.route
    assert (route.file, route.template, route.stop) == ("weblog.log", "msg", True)
    assert route.match.syslogtag_contains == "nginx"
    production = {"listen": {"addresses", "interface"}, "route": None}
    defaults = load_config()
    for section, fields in production.items():
        if fields is None:
            continue
        for name in msgspec.structs.fields(type(getattr(shipped, section))):
            if name.name not in fields:
                assert getattr(getattr(shipped, section), name.name) == getattr(
                    getattr(defaults, section), name.name
                ), f"{section}.{name.name}"
    for name in ("output", "parse", "hostname", "children", "origin", "metrics", "log"):
        assert getattr(shipped, name) == getattr(defaults, name), name


def test_shipped_config_has_every_key_commented() -> None:
    text = (ROOT / "conf" / "plura-relay.toml").read_text()
    lines = text.splitlines()
    sections = {"": Config, "listen": ListenConfig, "listen.tls": ListenTls,
                "output": OutputConfig, "parse": ParseConfig,
                "hostname": HostnameConfig, "children": ChildrenConfig, "metrics": MetricsConfig,
                "origin": OriginConfig,
                "log": LogConfig}  # fmt: skip
    for section, struct in sections.items():
        for field in msgspec.structs.fields(struct):
            if msgspec.inspect.type_info(field.type).__class__.__name__ == "StructType":
                continue
            if field.name in ("route", "forward"):
                continue
            assert any(line.startswith(f"{field.name} = ") for line in lines), (section, field.name)


def test_relay_example_documents_every_forward_key() -> None:
    """conf/relay.toml: a valid relay configuration that shows every [[forward]] key."""
    relay = load_config(ROOT / "conf" / "relay.toml")
    [target] = relay.forward
    assert (target.protocol, target.format, target.tls.verify) == ("tls", "rfc3164-origip", True)
    lines = (ROOT / "conf" / "relay.toml").read_text().splitlines()
    for struct in (Forward, ForwardTls):
        for field in msgspec.structs.fields(struct):
            if field.name in ("match", "tls"):
                continue
            assert any(line.startswith(f"{field.name} = ") for line in lines), field.name


def test_file_overrides_defaults_and_flags_override_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('state_dir = "/a"\n[output]\nlog_dir = "/from-file"\nflush_interval_s = 0.5\n')
    config = load_config(path, {"output.log_dir": "/from-flag"})
    assert config.output.log_dir == "/from-flag"
    assert config.output.flush_interval_s == 0.5
    assert config.state_dir == "/a"
    assert config.listen.addresses == ["0.0.0.0:514"]


BAD = [
    pytest.param("[output]\nlog_dirx = 1\n", "unknown field `log_dirx` - at `$.output`", id="typo"),
    pytest.param("workers = 'x'\n", "Expected `int`, got `str` - at `$.workers`", id="type"),
    pytest.param("workers = 0\n", "Expected `int` >= 1 - at `$.workers`", id="range"),
    pytest.param("[listen]\noversize = 'cut'\n", "at `$.listen.oversize`", id="enum"),
    pytest.param(
        "[listen]\naddresses = ['1.2.3.4:99999']\n",
        "port out of range",
        id="port",
    ),
    pytest.param(
        "[listen]\naddresses = ['node1:514']\n", "listen.addresses", id="hostname-not-address"
    ),
    pytest.param("[listen\n", "Expected ']'", id="toml-syntax"),
    pytest.param("[[forward]]\nname = 'a/b'\nhost = 'x'\n", "$.forward[0].name", id="forward-name"),
    pytest.param(
        "[[forward]]\nname = 'a'\nhost = 'x'\n[[forward]]\nname = 'a'\nhost = 'y'\n",
        "forward[1].name: 'a' is used twice",
        id="forward-twice",
    ),
    pytest.param("[[forward]]\nname = 'a'\n", "missing required field `host`", id="forward-host"),
    pytest.param(
        "[[forward]]\nname = 'a'\nhost = 'x'\n[forward.tls]\ncert_file = 'c.pem'\n",
        "cert_file and key_file go together",
        id="forward-client-cert",
    ),
    pytest.param(
        "[listen.tls]\naddresses = ['127.0.0.1:6514']\n",
        "cert_file and key_file are required",
        id="tls-listener-cert",
    ),
    pytest.param(
        "[listen.tls]\nrequire_client_cert = true\n", "expected client_ca_file", id="mtls-ca"
    ),
    pytest.param("[[route]]\nname = 'r'\n", "route[0].file: expected a file name", id="route-file"),
    pytest.param(
        "[[route]]\nname = 'r'\nfile = 'a-{node}.log'\n",
        "route[0].file: unknown placeholder in 'a-{node}.log', expecting {ip}, {namespace}, {pod},"
        " {workload}",
        id="route-placeholder",
    ),
    pytest.param(
        "[[route]]\nname = 'r'\nfile = 'a-{ip.log'\n", "route[0].file: ", id="route-brace"
    ),
    pytest.param(
        "[[route]]\nname = 'r'\nfile = 'x'\naction = 'drop'\n",
        "route[0].file: a drop route writes no file",
        id="route-drop-file",
    ),
    pytest.param(
        "[[route]]\nname = 'r'\nfile = 'x'\ntemplate = 'plain'\nset_programname = 'SECUi'\n",
        "route[0].set_programname: only with template",
        id="route-programname-template",
    ),
    pytest.param(
        "[[route]]\nname = 'r'\nfile = 'x'\nset_programname = 'a b'\n",
        "$.route[0].set_programname",
        id="route-programname-chars",
    ),
    pytest.param(
        "[[forward]]\nname = 'a'\nhost = 'x'\n[forward.match]\nmsg_contains = ['x']\n",
        "forward[0].match.msg_contains: routes only",
        id="forward-msg-contains",
    ),
]


@pytest.mark.parametrize(("text", "error"), BAD)
def test_bad_config_names_the_key(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=None) as info:
        load_config(path)
    assert error in str(info.value)
    assert str(path) in str(info.value)


def test_config_is_frozen() -> None:
    config = load_config()
    with pytest.raises(AttributeError):
        config.workers = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:514", ("127.0.0.1", 514)), ("[::1]:5514", ("::1", 5514)), ("10.244.2.1", ("10.244.2.1", 514)),
     ("[::]", ("::", 514)), (":6514", ("", 6514))],
)  # fmt: skip
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("value", [10, 48, 57, 256, -2])
def test_extra_frame_delimiter_is_a_byte_but_not_lf_or_a_digit(value: int) -> None:
    with pytest.raises(ConfigError, match="extra_frame_delimiter"):
        load_config(None, {"listen.extra_frame_delimiter": value})


@pytest.mark.parametrize(
    "overrides, clash",
    [
        ({"listen.addresses": ["0.0.0.0:5514", "127.0.0.1:5514"]}, True),
        ({"listen.addresses": ["[::]:5514", "127.0.0.1:5514"]}, True),  # dual-stack
        ({"listen.addresses": ["0.0.0.0:5514", "[::1]:5514"]}, False),
        ({"listen.addresses": ["127.0.0.1:5514", "127.0.0.2:5514"]}, False),
        ({"listen.addresses": ["127.0.0.1:0", "127.0.0.1:0"]}, False),  # each its own port
        (
            {
                "listen.addresses": ["127.0.0.1:5514"],
                "listen.tls.addresses": ["0.0.0.0:5514"],
                "listen.tls.cert_file": "c",
                "listen.tls.key_file": "k",
            },
            True,
        ),
        # UDP only: the metrics' TCP port may be the same number
        (
            {
                "listen.addresses": ["127.0.0.1:5514"],
                "listen.tcp": False,
                "metrics.listen": "127.0.0.1:5514",
            },
            False,
        ),
        ({"listen.addresses": ["127.0.0.1:5514"], "metrics.listen": ":5514"}, True),
    ],
)
def test_a_port_is_taken_once(overrides: dict[str, object], clash: bool) -> None:
    if clash:
        with pytest.raises(ConfigError, match="takes the port of"):
            load_config(None, overrides)
    else:
        load_config(None, overrides)


@pytest.mark.parametrize(
    "key, value",
    [("output.flush_interval_s", float("inf")),
     ("children.save_interval_s", 1e-9), ("listen.rcvbuf_bytes", 1 << 40),
     ("listen.idle_timeout_s", 0.1)],
)  # fmt: skip
def test_a_number_out_of_its_bounds_names_the_key_and_the_range(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}: expected .* to .*, got"):
        load_config(None, {key: value})


def test_zero_is_off_where_a_bound_says_so() -> None:
    config = load_config(None, {"listen.idle_timeout_s": 0.0, "children.retention_s": 0.0})
    assert (config.listen.idle_timeout_s, config.children.retention_s) == (0.0, 0.0)


@pytest.mark.parametrize("key", ["output.flush_interval_s", "listen.idle_timeout_s",
                                 "forward.0.confirm_after_s"])  # fmt: skip
def test_nan_is_no_number(key: str) -> None:
    overrides: dict[str, object] = {key: float("nan")}
    if key.startswith("forward"):
        overrides = {"forward": [{"name": "up", "host": "h", "confirm_after_s": float("nan")}]}
    with pytest.raises(ConfigError, match=key.rpartition(".")[2]):
        load_config(None, overrides)
