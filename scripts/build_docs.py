"""Build the HTML reference of vaekit's public API with pdoc, offline, plus the user guide page.

    python scripts/build_docs.py [OUT] [--guide docs/guide.md] [--strict]

Writes one page per public module (`vaekit`, each subpackage and each module in them; names
starting with `_` are left out), `guide.html` from the Markdown guide, `index.html` and the
search index into OUT (default build/docs). `make docs` runs it; tests/test_reference.py runs it
with `--strict`, which turns every warning raised while building (a name in `__all__` that does
not resolve, a module that fails to import, an annotation pdoc cannot read) into a failure.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import types
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def public_modules() -> list[str]:
    """`vaekit` and every module under it whose dotted name has no part starting with `_`."""
    import vaekit

    found = pkgutil.walk_packages(vaekit.__path__, "vaekit.")
    return ["vaekit"] + sorted(m.name for m in found if not any(p.startswith("_") for p in m.name.split(".")))


def build(out: Path, guide: Path) -> list[str]:
    """Write the reference into `out`; returns the names of the pages written (modules, then "guide")."""
    import pdoc.doc
    import pdoc.render

    names = public_modules()
    # `train`, `load_run`, ... are imported on first use by vaekit's module `__getattr__`; pdoc reads
    # a module's namespace, so each public name is resolved into it once before rendering.
    vaekit = importlib.import_module("vaekit")
    for name in vaekit.__all__:
        vars(vaekit).setdefault(name, getattr(vaekit, name))

    pdoc.render.configure(docformat="markdown", search=True, show_source=True)
    pages = {name: pdoc.doc.Module.from_name(name) for name in names}
    # The guide is a Markdown page rendered with the same template and links as the modules.
    pages["guide"] = pdoc.doc.Module(types.ModuleType("guide", guide.read_text(encoding="utf-8")))
    for page in pages.values():
        path = out / f"{page.fullname.replace('.', '/')}.html"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(pdoc.render.html_module(page, pages), encoding="utf-8")
    (out / "index.html").write_text(pdoc.render.html_index(pages), encoding="utf-8")
    (out / "search.js").write_text(pdoc.render.search_index(pages), encoding="utf-8")
    return list(pages)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, build the reference, and return the exit status (1 on a strict warning)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("out", nargs="?", type=Path, default=ROOT / "build" / "docs")
    parser.add_argument("--guide", type=Path, default=ROOT / "docs" / "guide.md")
    parser.add_argument("--strict", action="store_true", help="fail on any warning raised while building")
    args = parser.parse_args(argv)
    if not args.guide.is_file():
        print(f"build_docs: the user guide {args.guide} does not exist", file=sys.stderr)
        return 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pages = build(args.out, args.guide)
    for w in caught:
        print(f"build_docs: warning: {w.category.__name__}: {w.message} ({w.filename}:{w.lineno})", file=sys.stderr)
    if args.strict and caught:
        print(f"build_docs: {len(caught)} warning(s), failing in --strict mode", file=sys.stderr)
        return 1
    print(f"build_docs: {len(pages)} pages in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
