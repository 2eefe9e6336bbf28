"""The house rules as tests, so CI enforces them: ruff (lint and format) and mypy --strict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PATHS = ["relay", "tests", "loadtest", "fuzz"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("ruff", "check", *PATHS), id="ruff-check"),
        pytest.param(("ruff", "format", "--check", *PATHS), id="ruff-format"),
        pytest.param(("mypy", "--strict", "relay"), id="mypy-strict"),
    ],
)
def test_clean(args: tuple[str, ...]) -> None:
    result = _run(*args)
    assert result.returncode == 0, result.stdout + result.stderr
