"""setuptools' build backend, plus the optional mypyc build of setup.py: with PLURA_RELAY_MYPYC=1
a wheel build requires mypy (which brings mypyc) and the package's own dependencies (mypyc
type-checks the modules it compiles, and what they import); an editable install stays pure
Python."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403  (the rest of the backend as setuptools has it)

ENV = "PLURA_RELAY_MYPYC"
MYPY = "mypy>=1.10"


def _compiled() -> bool:
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes")


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    compiled = _compiled()
    # setuptools runs setup.py to find its requirements: before mypy is there, so pure
    saved = os.environ.pop(ENV, None)
    try:
        requires = list(_setuptools.get_requires_for_build_wheel(config_settings))
    finally:
        if saved is not None:
            os.environ[ENV] = saved
    if not compiled:
        return requires
    project = tomllib.loads((Path(__file__).parent / "pyproject.toml").read_text())["project"]
    return [*requires, MYPY, *project["dependencies"]]


# An editable install stays pure: its compiled modules would land in relay/ and shadow the
# sources being edited. (Each hook runs in a process of its own.)


def get_requires_for_build_editable(
    config_settings: dict[str, Any] | None = None,
) -> list[str]:
    os.environ.pop(ENV, None)
    return list(_setuptools.get_requires_for_build_editable(config_settings))


def prepare_metadata_for_build_editable(
    metadata_directory: str, config_settings: dict[str, Any] | None = None
) -> str:
    os.environ.pop(ENV, None)
    return str(_setuptools.prepare_metadata_for_build_editable(metadata_directory, config_settings))


def build_editable(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    os.environ.pop(ENV, None)
    return str(_setuptools.build_editable(wheel_directory, config_settings, metadata_directory))
