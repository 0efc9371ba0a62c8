"""The HTML reference builds (pdoc, warnings as errors) and every public function, class and
method in vaekit has a docstring, so neither a broken reference nor an undocumented name gets in."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import vaekit

ROOT = Path(__file__).resolve().parent.parent
SUBPACKAGES = [
    "cli",
    "config",
    "data",
    "distributions",
    "evaluation",
    "models",
    "objectives",
    "report",
    "runs",
    "training",
]


def _build_docs() -> types.ModuleType:
    """scripts/build_docs.py as a module: the pages it writes are the ones checked here."""
    spec = importlib.util.spec_from_file_location("build_docs", ROOT / "scripts" / "build_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


public_modules = _build_docs().public_modules


def _function(member: object) -> types.FunctionType | None:
    """The function behind a class attribute: a method, a static or class method, or a property's getter."""
    if isinstance(member, property):
        member = member.fget
    member = getattr(member, "__func__", member)
    return member if inspect.isfunction(member) else None


def _has_docstring(obj: object) -> bool:
    """Whether `obj` has a docstring of its own: a dataclass or a NamedTuple without one gets its
    signature, "Name(field, ...)", as `__doc__`."""
    doc = (obj.__doc__ or "").strip()
    return bool(doc) and not (inspect.isclass(obj) and doc.startswith(f"{obj.__name__}("))


def undocumented(module: types.ModuleType) -> list[str]:
    """The dotted names in `module` that lack a docstring: the module itself, its public functions
    and classes (defined there, not imported), and the public methods and properties each such class
    defines in its own body (inherited ones are the base class's business; overrides count)."""
    name = module.__name__
    missing = [] if (module.__doc__ or "").strip() else [name]
    for attr, obj in vars(module).items():
        if attr.startswith("_") or getattr(obj, "__module__", None) != name:
            continue
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        if not _has_docstring(obj):
            missing.append(f"{name}.{attr}")
        if inspect.isclass(obj):
            for method, member in vars(obj).items():
                func = _function(member)
                if not method.startswith("_") and func is not None and not (func.__doc__ or "").strip():
                    missing.append(f"{name}.{attr}.{method}")
    return missing


def test_every_public_name_has_a_docstring():
    missing = [n for module in public_modules() for n in undocumented(importlib.import_module(module))]
    assert not missing, f"{len(missing)} public name(s) without a docstring:\n  " + "\n  ".join(missing)


def test_the_docstring_check_reports_what_it_should(tmp_path):
    source = '''
        import json
        from dataclasses import dataclass
        from json import dumps
        from typing import NamedTuple

        class Documented:
            """Has a docstring."""

            def fine(self):
                """Documented."""

            def bare(self):
                pass

            @property
            def size(self):
                return 1

            @staticmethod
            def helper():
                pass

            def _private(self):
                pass

            def __len__(self):
                return 0

        class Bare:
            x: int = 0

        @dataclass
        class Record:
            x: int = 0

        class Pair(NamedTuple):
            a: int

        def loose(a):
            return a

        def _hidden():
            pass
    '''
    path = tmp_path / "tiny_module.py"
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location("tiny_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert sorted(undocumented(module)) == [
        "tiny_module",
        "tiny_module.Bare",
        "tiny_module.Documented.bare",
        "tiny_module.Documented.helper",
        "tiny_module.Documented.size",
        "tiny_module.Pair",
        "tiny_module.Record",
        "tiny_module.loose",
    ]
    module.__doc__ = "Now documented."
    assert "tiny_module" not in undocumented(module)


def test_the_reference_builds_with_warnings_as_errors(tmp_path):
    out = tmp_path / "docs"
    build = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_docs.py"), str(out), "--strict"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert build.returncode == 0, f"the reference does not build:\n{build.stdout}\n{build.stderr}"
    assert (out / "index.html").is_file() and (out / "search.js").is_file()
    assert "<h1" in (out / "guide.html").read_text()
    for package in SUBPACKAGES:
        assert (out / "vaekit" / f"{package}.html").is_file(), package
    for module in public_modules():
        assert (out / f"{module.replace('.', '/')}.html").is_file(), module
    # Every public name, the lazy ones (train, load_run, ...) included, has its entry on vaekit's page.
    page = (out / "vaekit.html").read_text()
    for name in vaekit.__all__:
        assert f'id="{name}"' in page, name
