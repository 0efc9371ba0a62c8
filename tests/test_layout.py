"""The package's folders are its layers: every import of vaekit points down (or within its own
layer), no module imports itself back through others, and no module outgrows one screenful of
ideas (350 lines)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src" / "vaekit"
# Lowest first. A module may import from its own layer and from the layers before it.
LAYERS = [
    {"vaekit._version", "vaekit.errors", "vaekit.atomic", "vaekit.devices"},
    {"vaekit.config"},
    {"vaekit.data"},
    {"vaekit.distributions"},
    {"vaekit.objectives"},
    {"vaekit.models"},
    {"vaekit.runs"},
    {"vaekit.report"},
    {"vaekit.evaluation"},
    {"vaekit.training"},
    {"vaekit.cli"},
    {"vaekit", "vaekit.__main__"},
]
MAX_LINES = 350


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _layer(module: str) -> int:
    for depth in range(module.count(".") + 1, 0, -1):
        prefix = ".".join(module.split(".")[:depth])
        for i, layer in enumerate(LAYERS):
            if prefix in layer:
                return i
    raise AssertionError(f"{module} belongs to no layer: add its package to LAYERS")


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The vaekit modules `path` imports, at the top or inside functions."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            # `from package import module` imports the module; `from module import name` the module.
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return {m for m in found if m == "vaekit" or m.startswith("vaekit.")}


def test_every_import_points_down_the_layers():
    modules = _modules()
    upward = []
    for name, path in modules.items():
        for imported in _imports(path, name, set(modules)):
            if _layer(imported) > _layer(name):
                upward.append(f"{name} imports {imported}")
    assert not upward, "imports pointing up the layers:\n" + "\n".join(upward)


def test_no_import_cycles():
    modules = _modules()
    graph = {name: _imports(path, name, set(modules)) & set(modules) for name, path in modules.items()}
    # A package's __init__ re-exports its own modules; its modules never import it back.
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            cycle = stack[stack.index(node) :] + [node]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, stack + [node])
        done.add(node)

    for name in sorted(graph):
        visit(name, [])


def test_no_module_is_over_350_lines():
    long = {name: n for name, p in _modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_layer_checker_sees_an_upward_import(tmp_path):
    # The checker itself: an objectives module importing training must be reported as upward.
    fake = tmp_path / "vaekit" / "objectives" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from vaekit.training.loop import train\nfrom vaekit.config import RunConfig\n")
    imported = _imports(fake, "vaekit.objectives.bad", {"vaekit.training.loop", "vaekit.config"})
    assert imported == {"vaekit.training.loop", "vaekit.config"}
    assert _layer("vaekit.training.loop") > _layer("vaekit.objectives.bad")
