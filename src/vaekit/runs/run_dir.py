"""A run directory: what it holds and how to load a trained model back from it."""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vaekit.atomic import atomic_write_text
from vaekit.config import RunConfig
from vaekit.data import DatasetSplits, load_dataset
from vaekit.errors import VaekitError
from vaekit.models.vae import VAE, check_networks_given
from vaekit.objectives.usage import USAGE_COLUMNS
from vaekit.runs.checkpoint import check_state_dict, has_checkpoint, load_checkpoint
from vaekit.runs.shipped import CONFIG, run_path

METRICS = "metrics.csv"
METRIC_COLUMNS = [
    "epoch",
    "step",
    "objective",
    "train_elbo",
    "train_recon",
    "train_kl",
    "train_loss",
    "val_elbo",
    "val_recon",
    "val_kl",
    "seconds",
    "images_per_s",
]


def default_run_dir() -> Path:
    """runs/YYYYmmdd-HHMMSS at the current time: where `vaekit train` writes without `--out`."""
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


@dataclass
class LoadedRun:
    """What `load_run` returns: the run's folder, its config, the model (in eval mode), the
    checkpoint's state.json and which checkpoint the weights came from.
    """

    path: Path
    config: RunConfig
    model: VAE
    state: dict[str, Any]
    checkpoint: str  # the pointer the weights came from: "best", or "latest" (asked for, or no best was kept)


def check_run_dir(run_dir: str | Path) -> Path:
    """The folder of `run_dir` ("zoo:NAME" included); raises VaekitError unless it is a run
    directory with a config.json and at least one checkpoint.
    """
    run_dir = run_path(run_dir)
    if not run_dir.is_dir():
        raise VaekitError(f"run directory {run_dir} does not exist; pass the folder `vaekit train --out` wrote")
    if not (run_dir / CONFIG).is_file():
        raise VaekitError(
            f"{run_dir} is not a vaekit run directory (no {CONFIG}); pass the folder `vaekit train --out` wrote"
        )
    if not has_checkpoint(run_dir, "latest"):
        raise VaekitError(
            f"{run_dir} has no checkpoint yet; "
            "train it (or resume it) until an epoch or --checkpoint-every step completes"
        )
    return run_dir


def load_run(
    run_dir: str | Path,
    which: str = "best",
    device: str | torch.device = "cpu",
    encoder: nn.Module | None = None,
    decoder: nn.Module | None = None,
) -> LoadedRun:
    """The model of a finished (or interrupted) run, in eval mode, on `device`. `run_dir` may
    name a shipped model: "zoo:fashion-mnist" (see `zoo_names`).

    A run trained with its own networks (VAE(config, encoder=..., decoder=...)) needs fresh
    instances of them: their weights are loaded from the checkpoint into these modules.
    """
    run_dir = check_run_dir(run_dir)
    config = RunConfig.load(run_dir / CONFIG)
    check_networks_given(
        config.model, encoder, decoder, what=str(run_dir), how="vaekit.load_run(path, encoder=..., decoder=...)"
    )
    if which == "best" and not has_checkpoint(run_dir, "best"):
        which = "latest"
    ckpt = load_checkpoint(run_dir, which)
    model = VAE(config.model, encoder=encoder, decoder=decoder)
    check_state_dict(model.state_dict(), ckpt.model, ckpt.path / "model.safetensors")
    model.load_state_dict(ckpt.model)
    return LoadedRun(run_dir, config, model.to(device).eval(), ckpt.state, which)


def load_run_data(config: RunConfig) -> DatasetSplits:
    """The dataset a run was trained on, split as it was (the same validation size)."""
    return load_dataset(
        config.data.dataset, config.data.data_dir, image_size=config.dataset_image_size(), val_size=config.data.val_size
    )


GROUP_KL_PREFIX = "val_kl_z"  # metrics.csv's per-group KL columns: val_kl_z3, val_kl_z2, val_kl_z1 (top first)


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Writes `rows` (one dict per epoch) to the run's metrics.csv atomically, floats to 6 digits."""
    buffer = io.StringIO()
    usage = [c for c in USAGE_COLUMNS if any(c in row for row in rows)]  # runs with K > 1
    groups = [c for c in (rows[0] if rows else {}) if c.startswith(GROUP_KL_PREFIX)]  # runs with levels >= 2
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS + groups + usage, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(run_dir / METRICS, buffer.getvalue())


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    """The rows of the run's metrics.csv as dicts of strings; [] when there is none yet."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def prepare_run_dir(out: Path) -> None:
    """Refuses a file, a read-only folder or an existing run before anything is written."""
    if out.exists() and not out.is_dir():
        raise VaekitError(f"--out {out} is a file; pass a folder path")
    if (out / CONFIG).exists():
        raise VaekitError(f"--out {out} already holds a run; use `vaekit train --resume {out}` or another --out")
    probe = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not probe.is_dir():
        raise VaekitError(f"--out {out} cannot be created: {probe} is a file, not a folder; choose another --out")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise VaekitError(f"--out {out} is not writable ({probe} is read-only); choose another folder")
