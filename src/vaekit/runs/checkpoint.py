"""Checkpoints that are safe to load and never half-written.

A checkpoint is a folder: `model.safetensors` (weights), `state.json` (counters, metrics,
version) and `training_state.pt` (optimizer and RNG tensors, read only with
`torch.load(weights_only=True)`, so a stranger's file cannot run code). Folders are written
under a temporary name, flushed and renamed; the pointer files `latest` and `best` are
replaced atomically, so a kill at any moment leaves the previous checkpoint usable.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vaekit.atomic import atomic_write_text, fsync
from vaekit.errors import VaekitError

FORMAT_VERSION = 1
POINTERS = ("latest", "best")


@dataclass
class Checkpoint:
    """One checkpoint folder read back: the model's tensors, its state.json, the training state
    (when asked for) and the folder's path.
    """

    model: dict[str, torch.Tensor]
    state: dict[str, Any]  # JSON: epoch, step, position, metrics, version
    training: dict[str, Any] | None  # optimizer state and RNG states, when asked for
    path: Path


def save_checkpoint(
    run_dir: Path,
    model_state: dict[str, torch.Tensor],
    state: dict[str, Any],
    training: dict[str, Any],
    pointers: tuple[str, ...] = ("latest",),
) -> Path:
    """Writes checkpoints/step-<N>/ and points each name in `pointers` at it."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{state['step']:09d}"
    final = root / name
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}.", suffix=".tmp"))
    try:
        tensors = {k: v.detach().contiguous().cpu() for k, v in model_state.items()}
        save_file(
            tensors, str(tmp / "model.safetensors"), metadata={"format": "vaekit", "version": str(FORMAT_VERSION)}
        )
        buffer = io.BytesIO()
        torch.save(training, buffer)
        for file, data in (
            ("training_state.pt", buffer.getvalue()),
            ("state.json", json.dumps({**state, "format_version": FORMAT_VERSION}, indent=2).encode()),
        ):
            with open(tmp / file, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        if final.exists():  # the same step saved again (e.g. interrupted, then resumed)
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for pointer in pointers:
        atomic_write_text(root / pointer, name + "\n")
    _remove_unreferenced(root)
    return final


def _remove_unreferenced(root: Path) -> None:
    keep = {resolve_pointer(root, p) for p in POINTERS if (root / p).exists()}
    for child in root.iterdir():
        if child.is_dir() and child not in keep:
            shutil.rmtree(child, ignore_errors=True)


def resolve_pointer(root: Path, pointer: str) -> Path:
    """The checkpoint folder that the pointer file `root/pointer` ("latest" or "best") names;
    raises VaekitError if the pointer is missing or does not name a `step-N` folder.
    """
    try:
        name = (root / pointer).read_text().strip()
    except OSError:
        raise VaekitError(
            f"{root.parent} has no '{pointer}' checkpoint; train it first or pass a finished run directory"
        ) from None
    if not name.startswith("step-") or "/" in name:
        raise VaekitError(f"{root / pointer} is corrupt (points at {name!r}); delete it and resume from another run")
    return root / name


def has_checkpoint(run_dir: Path, pointer: str = "latest") -> bool:
    """Whether the run directory has the checkpoint `pointer` ("latest" or "best")."""
    return (Path(run_dir) / "checkpoints" / pointer).is_file()


def load_checkpoint(run_dir: Path, pointer: str = "latest", with_training: bool = False) -> Checkpoint:
    """The checkpoint `pointer` of a run directory: its weights, its state.json and, with
    `with_training`, the optimizer and train state; raises VaekitError on a missing or damaged file.
    """
    folder = resolve_pointer(Path(run_dir) / "checkpoints", pointer)
    weights = folder / "model.safetensors"
    try:
        model = load_file(str(weights))
    except FileNotFoundError:
        raise VaekitError(f"{weights} is missing; the checkpoint is incomplete, resume from another run") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise VaekitError(f"{weights} is not a valid safetensors file ({exc}); refusing to load it") from None
    try:
        state = json.loads((folder / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise VaekitError(f"{folder / 'state.json'} is unreadable ({exc}); the checkpoint is damaged") from None
    if state.get("format_version") != FORMAT_VERSION:
        raise VaekitError(
            f"{folder} has checkpoint format {state.get('format_version')!r}, this vaekit reads "
            f"{FORMAT_VERSION}; use the vaekit version that wrote it"
        )
    training = None
    if with_training:
        training = safe_torch_load(folder / "training_state.pt")
    return Checkpoint(model, state, training, folder)


def safe_torch_load(path: Path) -> Any:
    """torch.load restricted to tensors and plain containers: a pickle that would run code is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise VaekitError(f"{path} is missing; the checkpoint is incomplete") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VaekitError(f"{path} is not a plain tensor file ({first[:160]}); refusing to load it") from None


def check_state_dict(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], where: Path) -> None:
    """Names what differs between a model's tensors and a checkpoint's, in one line."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    shapes = [k for k in sorted(set(expected) & set(found)) if expected[k].shape != found[k].shape]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    if extra:
        problems.append(f"unexpected {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}")
    if shapes:
        k = shapes[0]
        problems.append(f"{k} has shape {tuple(found[k].shape)}, expected {tuple(expected[k].shape)}")
    if problems:
        raise VaekitError(
            f"{where} does not match its config ({'; '.join(problems)}); it was written by another model "
            f"or vaekit version"
        )
