"""Bad configs through the real CLI: `plura-relay check-config` and `plura-relay serve` as
processes. Each must exit 2 with one line on stderr naming the key (or path), never a traceback;
what `serve` would fail on or be useless with, `check-config` rejects first."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from relay.config import BOUNDS, Config, bounds_table

ROOT = Path(__file__).resolve().parent.parent
BASE = """state_dir = "{tmp}/state"
[listen]
addresses = ["127.0.0.1:0"]
[output]
log_dir = "{tmp}/logs"
[metrics]
listen = ""
"""

# id, what to add or replace (TOML, formatted with tmp/port/cert), the key the error names;
# a [section] given here replaces BASE's section of that name.
CASES = [
    ("udp-and-tcp-off", "[listen]\naddresses = [\"127.0.0.1:0\"]\nudp = false\ntcp = false\n",
     "listen.udp"),
    ("rcvbuf-huge", "[listen]\naddresses = [\"127.0.0.1:0\"]\nrcvbuf_bytes = 99999999999999\n",
     "listen.rcvbuf_bytes"),
    ("metrics-not-an-address", '[metrics]\nlisten = "nonsense"\n', "metrics.listen"),
    ("metrics-port-out-of-range", '[metrics]\nlisten = "127.0.0.1:99999"\n', "metrics.listen"),
    ("metrics-port-not-a-number", '[metrics]\nlisten = "127.0.0.1:abc"\n', "metrics.listen"),
    ("metrics-a-name", '[metrics]\nlisten = "example.com:9514"\n', "metrics.listen"),
    ("hook-url-ftp", '[children]\nhook_url = "ftp://example.com/"\n', "children.hook_url"),
    ("hook-url-no-host", '[children]\nhook_url = "http://"\n', "children.hook_url"),
    ("hook-command-missing", '[children]\nhook_command = ["/nonexistent/hook"]\n',
     "children.hook_command"),
    ("tls-cert-missing", '[listen.tls]\naddresses = ["127.0.0.1:0"]\n'
     'cert_file = "{tmp}/missing.pem"\nkey_file = "{key}"\n', "listen.tls"),
    ("tls-key-missing", '[listen.tls]\naddresses = ["127.0.0.1:0"]\n'
     'cert_file = "{cert}"\nkey_file = "{tmp}/missing.key"\n', "listen.tls"),
    ("tls-cert-not-pem", '[listen.tls]\naddresses = ["127.0.0.1:0"]\n'
     'cert_file = "{tmp}/junk.pem"\nkey_file = "{key}"\n', "listen.tls"),
    ("forward-ca-missing", '[[forward]]\nname = "up"\nhost = "127.0.0.1"\nprotocol = "tls"\n'
     '[forward.tls]\nca_file = "{tmp}/missing-ca.pem"\n', "forward[0].tls"),
    ("forward-port-0", '[[forward]]\nname = "up"\nhost = "127.0.0.1"\nport = 0\n',
     "forward[0].port"),
    ("route-file-empty", '[[route]]\nname = "web"\nfile = ""\n', "route[0].file"),
    ("route-file-a-directory", '[[route]]\nname = "web"\nfile = "sub/"\n', "route[0].file"),
    ("log-dir-a-file", '[output]\nlog_dir = "{tmp}/a-file"\n', "output.log_dir"),
    ("log-dir-under-a-file", '[output]\nlog_dir = "{tmp}/a-file/logs"\n', "output.log_dir"),
    ("log-dir-not-writable", '[output]\nlog_dir = "{tmp}/locked/logs"\n', "output.log_dir"),
    ("state-dir-a-file", 'state_dir = "{tmp}/a-file"\n', "state_dir"),
    ("flush-interval-inf", "[output]\nlog_dir = \"{tmp}/logs\"\nflush_interval_s = inf\n",
     "output.flush_interval_s"),
    ("flush-interval-nan", "[output]\nlog_dir = \"{tmp}/logs\"\nflush_interval_s = nan\n",
     "output.flush_interval_s"),
    ("reopen-check-1e-9", "[output]\nlog_dir = \"{tmp}/logs\"\nreopen_check_interval_s = 1e-9\n",
     "output.reopen_check_interval_s"),
    ("save-interval-1e-9", "[children]\nsave_interval_s = 1e-9\n", "children.save_interval_s"),
    ("idle-timeout-1e-9", "[listen]\naddresses = [\"127.0.0.1:0\"]\nidle_timeout_s = 1e-9\n",
     "listen.idle_timeout_s"),
    ("forward-fsync-1e-9", '[[forward]]\nname = "up"\nhost = "127.0.0.1"\n'
     "fsync_interval_s = 1e-9\n", "forward[0].fsync_interval_s"),
    ("forward-relp-window-0", '[[forward]]\nname = "up"\nhost = "127.0.0.1"\n'
     'protocol = "relp"\nrelp_window = 0\n', "forward[0].relp_window"),
    ("forward-relp-ack-timeout-1e-9", '[[forward]]\nname = "up"\nhost = "127.0.0.1"\n'
     'protocol = "relp"\nrelp_ack_timeout_s = 1e-9\n', "forward[0].relp_ack_timeout_s"),
    ("forward-relp-tls-ca-missing", '[[forward]]\nname = "up"\nhost = "127.0.0.1"\n'
     'protocol = "relp-tls"\n[forward.tls]\nca_file = "{tmp}/missing-ca.pem"\n',
     "forward[0].tls"),
    ("forward-protocol-relpx", '[[forward]]\nname = "up"\nhost = "127.0.0.1"\n'
     'protocol = "relpx"\n', "forward[0].protocol"),
    ("backoff-initial-above-max", "[children]\nhook_backoff_initial_s = 60.0\n"
     "hook_backoff_max_s = 10.0\n", "children.hook_backoff_initial_s"),
    ("no-listen-address", "[listen]\naddresses = []\n", "listen.addresses"),
    ("one-address-twice", '[listen]\naddresses = ["127.0.0.1:{port}", "127.0.0.1:{port}"]\n',
     "listen.addresses"),
    ("metrics-on-the-syslog-port", '[listen]\naddresses = ["127.0.0.1:{port}"]\n'
     '[metrics]\nlisten = "0.0.0.0:{port}"\n', "metrics.listen"),
]  # fmt: skip

# environment found only at start: check-config passes (the server may be running), serve not
SERVE_ONLY = [
    ("port-in-use", '[listen]\naddresses = ["127.0.0.1:{busy}"]\n', "127.0.0.1:{busy}"),
]


def merge(base: str, change: str) -> str:
    """BASE with the sections of `change` replacing its own (top-level keys go first)."""

    def sections(text: str) -> dict[str, str]:
        found: dict[str, str] = {}
        name = ""
        for line in text.splitlines(keepends=True):
            if line.startswith("["):
                name = line.strip()
            found[name] = found.get(name, "") + line
        return found

    merged = sections(base)
    for name, body in sections(change).items():
        if name == "":
            top = {line.split("=")[0].strip() for line in body.splitlines()}
            kept = [ln for ln in merged.get("", "").splitlines(True)
                    if ln.split("=")[0].strip() not in top]  # fmt: skip
            merged[""] = body + "".join(kept)
        else:
            merged[name] = body
    return merged.pop("", "") + "".join(merged.values())


@contextlib.contextmanager
def unwritable(directory: Path) -> Iterator[None]:
    """A directory nobody may create files in: read-only for root (a read-only tmpfs mounted
    there: root ignores permission bits), mode 0555 otherwise."""
    directory.mkdir()
    if os.geteuid() != 0:
        directory.chmod(0o555)
        yield
        directory.chmod(0o755)
        return
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(directory)],
                   check=True)  # fmt: skip
    try:
        yield
    finally:
        subprocess.run(["umount", str(directory)], check=True)


@pytest.fixture
def setting(tmp_path: Path) -> Iterator[dict[str, str]]:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    (tmp_path / "a-file").write_text("a file, not a directory\n")
    with socket.socket() as busy, unwritable(tmp_path / "locked"):
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            port = free.getsockname()[1]
        yield {"tmp": str(tmp_path), "cert": str(tmp_path / "cert.pem"),
               "key": str(tmp_path / "key.pem"), "busy": str(busy.getsockname()[1]),
               "port": str(port)}  # fmt: skip


def relay_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args], capture_output=True, text=True, timeout=20
    )


def assert_one_line_naming(result: subprocess.CompletedProcess[str], key: str) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert len(lines) == 1 and key in lines[0], result.stderr


@pytest.mark.timeout(120)
@pytest.mark.parametrize("change, key", [pytest.param(c, k, id=i) for i, c, k in CASES])
def test_bad_config_is_one_line_naming_the_key(
    tmp_path: Path, setting: dict[str, str], change: str, key: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(merge(BASE, change).format(**setting))
    assert_one_line_naming(relay_cli("check-config", str(config)), key)
    try:
        served = relay_cli("serve", "--config", str(config))
    except subprocess.TimeoutExpired:
        pytest.fail("serve started with a config it cannot use")
    assert_one_line_naming(served, key)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("change, key", [pytest.param(c, k, id=i) for i, c, k in SERVE_ONLY])
def test_environment_found_at_start_is_one_line(
    tmp_path: Path, setting: dict[str, str], change: str, key: str
) -> None:
    config = tmp_path / "env.toml"
    config.write_text(merge(BASE, change).format(**setting))
    assert relay_cli("check-config", str(config)).returncode == 0
    assert_one_line_naming(relay_cli("serve", "--config", str(config)), key.format(**setting))


def test_the_base_config_serves(tmp_path: Path, setting: dict[str, str]) -> None:
    """The cases fail for what they change, not for BASE."""
    config = tmp_path / "ok.toml"
    config.write_text(BASE.format(**setting))
    result = relay_cli("check-config", str(config))
    assert result.returncode == 0, result.stderr


def numbers(struct: type, prefix: str = "") -> Iterator[tuple[str, object]]:
    """(dotted key, msgspec type info) of every int/float field in the config tree."""
    import msgspec

    for field in msgspec.structs.fields(struct):
        info = msgspec.inspect.type_info(field.type)
        if isinstance(info, msgspec.inspect.UnionType):
            info = next(t for t in info.types if not isinstance(t, msgspec.inspect.NoneType))
        key = f"{prefix}{field.name}"
        if isinstance(info, msgspec.inspect.ListType):
            key, info = key + "[]", info.item_type
        if isinstance(info, msgspec.inspect.StructType):
            yield from numbers(info.cls, key + ".")
        elif isinstance(info, msgspec.inspect.IntType | msgspec.inspect.FloatType):
            yield key, info


def test_every_number_has_a_bound() -> None:
    """A new numeric key needs a Bound in relay.config.BOUNDS (or a schema bounding it on
    both sides), and README's Bounds table regenerated (`python -m relay.config bounds`)."""
    unbounded = [
        key for key, info in numbers(Config)
        if key not in BOUNDS
        and not ((info.ge is not None or info.gt is not None)  # type: ignore[attr-defined]
                 and (info.le is not None or info.lt is not None))  # type: ignore[attr-defined]
    ]  # fmt: skip
    assert unbounded == []
    assert set(BOUNDS) <= {key for key, _ in numbers(Config)}


def test_readme_shows_the_bounds() -> None:
    readme = (ROOT / "README.md").read_text()
    assert bounds_table() in readme, "regenerate README's table: python -m relay.config bounds"
