"""The optional compiled build: `PLURA_RELAY_MYPYC=1 pip install .` compiles the hot path with
mypyc (another 5-10 % less CPU per message, measured in loadtest/RESULTS.md); without the variable
(the default) the package is pure Python and needs no C compiler. The container image is built
compiled (Dockerfile); CI tests the pure path, and tests/test_compiled.py builds the compiled one
and checks that it writes the same bytes.

Only modules whose code runs per message or per batch are compiled; they keep their .py source
beside them. `build_backend.py` adds mypy to the build requirements when the variable is set
and leaves editable installs pure (their extensions would sit in the source tree and shadow the
.py files being edited).
"""

from __future__ import annotations

import os

from setuptools import setup

COMPILED = (
    "relay/parse/fast.py",
    "relay/ingest/framing.py",
    "relay/ingest/udp.py",
    "relay/output/template.py",
    "relay/pipeline.py",
)
ENV = "PLURA_RELAY_MYPYC"


def wanted() -> bool:
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes")


def ext_modules() -> list[object]:
    if not wanted():
        return []
    from mypyc.build import mypycify

    # group_name: the shared runtime library is plura_relay__mypyc, not a hash
    return list(mypycify(list(COMPILED), opt_level="3", group_name="plura_relay"))


setup(ext_modules=ext_modules())
