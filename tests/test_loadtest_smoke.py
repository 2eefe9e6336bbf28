"""The load-test harness must not rot: its smoke variant runs in CI (seconds, no thresholds)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_loadtest_smoke_runs_against_both_servers(tmp_path: Path) -> None:
    missing = [tool for tool in ("gcc", "taskset") if shutil.which(tool) is None]
    if shutil.which("rsyslogd") is None and not Path("/usr/sbin/rsyslogd").exists():
        missing.append("rsyslogd")
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"missing in CI: {missing}")
        pytest.skip(f"needs {missing}")
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
