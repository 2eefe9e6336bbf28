"""The layout is the architecture: data flows ingest -> parse -> output / forward, with children,
node and ops beside it; runtime builds everything, cli starts runtime. Checked on the imports
themselves (every `import`, also inside functions and under TYPE_CHECKING)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "relay"

# the packages of the data path, and what each may import besides the top-level value modules
TOP_LEVEL = {"config", "message", "tls", "__init__", "__main__", "cli", "pipeline"}
VALUE_MODULES = {"config", "message", "tls"}
ALLOWED: dict[str, set[str]] = {
    "parse": set(),
    "ingest": set(),
    "output": {"parse"},
    "forward": {"parse", "output", "ingest"},
    "kube": set(),
    "children": {"kube"},
    "node": set(),
    "ops": set(),
    "pipeline": {"ingest", "parse", "output", "forward"},
    "runtime": {
        "ingest",
        "parse",
        "output",
        "forward",
        "children",
        "node",
        "ops",
        "pipeline",
        "kube",
    },
    "cli": {"runtime", "children", "node", "ops", "forward", "parse"},
}


def modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports_of(path: Path, name: str) -> Iterator[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def graph() -> dict[str, set[str]]:
    known = modules()
    return {
        name: {target for target in imports_of(path, name) if target in known and target != name}
        for name, path in known.items()
    }


def area(module: str) -> str:
    """relay.ingest.tcp -> ingest; relay.pipeline -> pipeline; relay -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_package_has_a_docstring_saying_what_it_owns() -> None:
    for init in ROOT.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 60, (
            f"{init} needs a docstring: what it owns, what it must not know"
        )


def test_no_module_imports_one_that_imports_it_back() -> None:
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_packages_import_only_downstream() -> None:
    wrong = []
    for module, targets in graph().items():
        source = area(module)
        if source in VALUE_MODULES | {"__init__", "__main__"}:
            allowed = VALUE_MODULES | {"__init__"} | ({"cli"} if source == "__main__" else set())
        else:
            allowed = ALLOWED[source] | VALUE_MODULES | {"__init__", source}
        for target in targets:
            if area(target) not in allowed:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_the_top_level_holds_only_the_entry_points_and_the_shared_value_types() -> None:
    loose = {p.stem for p in ROOT.glob("*.py")} - TOP_LEVEL
    assert not loose, f"modules outside a package: {sorted(loose)}"
