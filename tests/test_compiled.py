"""The optional mypyc build (setup.py, PLURA_RELAY_MYPYC=1): built as a user would build it
(`pip wheel` of the project), its compiled modules pass the hot path's own tests: the fused
pipeline against render(parse(frame)), the framer's tables, the UDP listener on real sockets,
the fast parser, the fuzz invariants. CI runs everything else on the pure Python path.

Needs a C compiler and Python's headers (skipped without them: the pure path needs neither).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path
from typing import cast

import pytest

from loadtest.servers import build_mypyc_tree

ROOT = Path(__file__).resolve().parents[1]


def _setup_constant(name: str) -> object:
    """A constant of setup.py (importing it would run setup())."""
    for node in ast.parse((ROOT / "setup.py").read_text()).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", "") for t in node.targets] == [name]:
            return ast.literal_eval(node.value)
    raise AssertionError(f"setup.py has no {name}")


COMPILED = cast(tuple[str, ...], _setup_constant("COMPILED"))
ENV = cast(str, _setup_constant("ENV"))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# the tests the compiled modules must pass, run from the unpacked wheel
HOT_PATH_TESTS = (
    "tests/test_pipeline.py",
    "tests/ingest/test_framing.py",
    "tests/ingest/test_udp.py",
    "tests/parse/test_fast.py",
    "tests/fuzz/test_fuzz_quick.py",
)


def _toolchain() -> str | None:
    """Why a compiled build cannot be made here, or None."""
    if shutil.which(os.environ.get("CC", "cc")) is None:
        return "no C compiler (cc)"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        return "no Python headers (Python.h)"
    try:
        import mypyc  # noqa: F401
    except ImportError:
        return "no mypyc (pip install mypy)"
    return None


@pytest.fixture(scope="module")
def compiled_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's tests beside the compiled wheel's contents, built from a copy of the
    sources (no build/ left over from an earlier build)."""
    missing = _toolchain()
    if missing:
        pytest.skip(f"compiled build: {missing}")
    base = tmp_path_factory.mktemp("mypyc")
    # built as the load test builds it (loadtest.servers.build_mypyc_tree: `pip wheel` of a
    # copy of the sources, unpacked); the project's tests go beside the compiled package
    run = Path(build_mypyc_tree(base).tree)
    for name in ("tests", "fuzz", "pyproject.toml"):
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, run / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, run / name)
    return run


def test_the_wheel_holds_every_compiled_module(compiled_tree: Path) -> None:
    probe = subprocess.run(
        [sys.executable, "-c", "import importlib, sys\n"
         "for m in sys.argv[1:]: print(importlib.import_module(m).__file__)",
         *(c.removesuffix(".py").replace("/", ".") for c in COMPILED)],
        cwd=compiled_tree, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    files = probe.stdout.split()
    assert len(files) == len(COMPILED)
    assert all(f.endswith(".so") and f.startswith(str(compiled_tree)) for f in files), files


def test_compiled_modules_pass_the_hot_path_tests(compiled_tree: Path) -> None:
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *HOT_PATH_TESTS],
        cwd=compiled_tree, capture_output=True, text=True, timeout=800,
    )  # fmt: skip
    tail = tests.stdout[-4000:] + tests.stderr[-2000:]
    assert tests.returncode == 0, tail
    assert " passed" in tests.stdout and " failed" not in tests.stdout, tail


def test_the_default_build_is_pure_python(tmp_path: Path) -> None:
    """`pip install .` without the variable: no extension, no compiler needed."""
    env = {k: v for k, v in os.environ.items() if k != ENV}
    env["CC"] = "/nonexistent/cc"  # a compiler, if one were called, would fail the build
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-cache-dir", "-q", "-w", str(tmp_path), str(ROOT)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = tmp_path.glob("*.whl")
    assert wheel.name.endswith("-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert not [n for n in archive.namelist() if n.endswith(".so")]
