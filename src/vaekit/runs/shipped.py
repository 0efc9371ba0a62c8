"""Trained models shipped with vaekit, loadable offline by name: `vaekit sample zoo:fashion-mnist`,
`vaekit.load_run("zoo:fashion-mnist-long")`.

Each is a run folder under vaekit/zoo/: config.json, metrics.csv, the weights of one checkpoint
(no optimizer state) and the evaluation.json (with its per-image file) the README quotes.
Torch-free, so that `vaekit compare` can name them without importing torch.
"""

from __future__ import annotations

from pathlib import Path

from vaekit.errors import VaekitError

ZOO_DIR = Path(__file__).parent.parent / "zoo"  # vaekit/zoo
ZOO_PREFIX = "zoo:"
CONFIG = "config.json"  # a run folder's settings file, here because this module needs no torch


def zoo_names() -> list[str]:
    """The shipped models' names, as "zoo:NAME" takes them."""
    return sorted(p.name for p in ZOO_DIR.iterdir() if (p / CONFIG).is_file()) if ZOO_DIR.is_dir() else []


def run_path(run: str | Path) -> Path:
    """The folder of a run: `run` itself, or the shipped one for "zoo:NAME"."""
    text = str(run)
    if not text.startswith(ZOO_PREFIX):
        return Path(run)
    name = text[len(ZOO_PREFIX) :]
    if name not in zoo_names():
        known = ", ".join(ZOO_PREFIX + n for n in zoo_names()) or "nothing"
        raise VaekitError(f"there is no shipped model {text!r}; the zoo holds {known}")
    return ZOO_DIR / name


def is_shipped(path: str | Path) -> bool:
    """Whether `path` is one of the shipped models' folders under vaekit/zoo."""
    return Path(path).resolve().parent == ZOO_DIR.resolve()


def output_dir(path: str | Path) -> Path:
    """Where commands write what they make of a run: its own folder, or for a shipped model
    ./zoo-NAME (created), so that the shipped evaluation.json stays the reference."""
    if not is_shipped(path):
        return Path(path)
    out = Path(f"zoo-{Path(path).name}")
    try:
        out.mkdir(exist_ok=True)
    except OSError as exc:
        raise VaekitError(
            f"cannot create {out} for the outputs of zoo:{Path(path).name} ({exc.strerror}); run from a writable folder"
        ) from None
    return out
