"""The load-test harness must not rot: its smoke variants (`smoke`, `relay --smoke`) run in CI
(seconds, no thresholds)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def require_tools() -> None:
    """The harness compiles C and runs rsyslogd pinned: skip without them (fail in CI)."""
    missing = [tool for tool in ("gcc", "taskset") if shutil.which(tool) is None]
    if shutil.which("rsyslogd") is None and not Path("/usr/sbin/rsyslogd").exists():
        missing.append("rsyslogd")
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"missing in CI: {missing}")
        pytest.skip(f"needs {missing}")


@pytest.mark.slow
def test_loadtest_smoke_runs_against_both_servers(tmp_path: Path) -> None:
    require_tools()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest",
            "-q",
            "smoke",
            "--servers",
            "rsyslog,plura-relay",
            "--plura-args=--workers 2",
            "--out-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.slow
def test_loadtest_relay_smoke_forwards_through_both_servers(tmp_path: Path) -> None:
    require_tools()
    result = subprocess.run(
        [sys.executable, "-m", "loadtest", "-q", "relay", "--smoke", "--out-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "RELAY-RESULTS.md").exists()
    [raw] = tmp_path.glob("relay-results-*.json")
    records = json.loads(raw.read_text())["records"]
    relayed = [r for r in records if r["label"] == "relay"]
    assert {r["server"] for r in relayed} == {"rsyslog", "plura-relay"}
    for r in relayed:  # the harness saw every message arrive and checked them
        assert r["received"] == r["sent"] > 0, r["server"]
        assert r["fwd_received"] + r["fwd_missing"] == r["sent"], r["server"]
        assert r["sample_checked"] > 0, r["server"]


@pytest.mark.parametrize(
    ("names", "plura", "rsyslog", "trees", "expected"),
    [
        ("rsyslog,plura-relay", [], [], [], ["rsyslog", "plura-relay"]),
        ("plura-relay", ["--workers 2"], [], [], ["plura-relay", "plura-relay --workers 2"]),
        ("rsyslog", [], ["threads=2 rcvbuf=4m"], [], ["rsyslog", "rsyslog threads=2 rcvbuf=4m"]),
        ("", [], [], [str(ROOT)], ["plura-relay @"]),
    ],
)
def test_server_variants(
    names: str, plura: list[str], rsyslog: list[str], trees: list[str], expected: list[str]
) -> None:
    from loadtest.servers import parse_servers

    specs = parse_servers(names, plura, rsyslog, trees)
    assert [s.name[: len(e)] for s, e in zip(specs, expected, strict=True)] == expected
    if trees:  # another checkout: its relay/ on PYTHONPATH, named by its commit
        assert specs[-1].tree == str(ROOT) and len(specs[-1].name) > len("plura-relay @")


@pytest.mark.parametrize(
    ("plura", "rsyslog", "trees", "error"),
    [
        ([], ["threads"], [], "expecting threads=N or rcvbuf=SIZE"),
        ([], ["queue=9"], [], "expecting threads=N or rcvbuf=SIZE"),
        ([], [], ["/nonexistent"], "no relay/ package there"),
        ([], [], [], "no server selected"),
    ],
)
def test_bad_server_variants(
    plura: list[str], rsyslog: list[str], trees: list[str], error: str
) -> None:
    from loadtest.servers import parse_servers

    with pytest.raises(ValueError, match=error):
        parse_servers("", plura, rsyslog, trees)
