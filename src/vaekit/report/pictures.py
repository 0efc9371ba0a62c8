"""A run's pictures: samples, reconstructions and curves every epoch; the latent scatter,
component usage and a hierarchy's KL per group; and, before a report, whichever of them (and
the interpolations) a run lacks."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from vaekit.config import ModelConfig
from vaekit.data import DatasetSplits
from vaekit.data.batching import to_float
from vaekit.errors import VaekitError
from vaekit.models.vae import VAE
from vaekit.report.group_kl import plot_group_kl
from vaekit.report.image_grids import save_image_grid, save_reconstructions
from vaekit.report.interpolate import interpolate_run
from vaekit.report.plots import plot_component_usage, plot_latent_scatter, plot_loss_curves
from vaekit.runs.run_dir import LoadedRun, load_run, load_run_data, read_metrics

PICTURE_SEED = 4321  # the same prior draws every epoch, so samples.png shows the model change, not the noise
LATENT_PICTURE_IMAGES = 2000  # enough for a readable scatter, cheap enough for every epoch


def refresh_pictures(run_dir: Path, model: VAE, data: DatasetSplits, device: torch.device) -> None:
    """samples.png, reconstructions.png, loss_curves.png and the latent pictures, after an epoch."""
    model.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(PICTURE_SEED)
        save_image_grid(model.sample(64).float().cpu(), run_dir / "samples.png", nrow=8)
        x = data.val.images[:32].to(device).float().div(255)
        save_reconstructions(model.crop(x).cpu(), model.reconstruct(x).float().cpu(), run_dir / "reconstructions.png")
    plot_loss_curves(read_metrics(run_dir), run_dir / "loss_curves.png")
    # Every epoch rather than only the last, so an interrupted run has them too.
    write_latent_pictures(run_dir, model, data, device)
    model.train()


@torch.no_grad()
def write_latent_pictures(
    run_dir: str | Path,
    model: VAE,
    data: DatasetSplits,
    device: torch.device | None = None,
    n: int = LATENT_PICTURE_IMAGES,
) -> None:
    """latent_scatter.png (and component_usage.png for K>1) from the first n validation images;
    group_kl.png for a hierarchy, from metrics.csv.

    Validation, not test: the trainer draws these every epoch and never reads the test split.
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    x = to_float(data.val.images[:n].to(device))
    means, weights = [], []
    for start in range(0, len(x), 500):
        q = model.encode(x[start : start + 500])
        means.append(q.mean.float().cpu())
        weights.append(q.weights.double().cpu())
    model.train(was_training)
    labels = data.val.labels[:n] if data.val.labels is not None else None
    plot_latent_scatter(torch.cat(means), labels, Path(run_dir) / "latent_scatter.png", data.class_names)
    if model.config.components > 1:
        usage = torch.cat(weights).mean(0)
        plot_component_usage(usage, Path(run_dir) / "component_usage.png", read_metrics(Path(run_dir)))
    if model.config.levels > 1:
        plot_group_kl(read_metrics(Path(run_dir)), Path(run_dir) / "group_kl.png")


def latent_pictures(config: ModelConfig) -> list[str]:
    """The pictures `write_latent_pictures` draws for a model of `config`."""
    return (
        ["latent_scatter.png"]
        + (["component_usage.png"] if config.components > 1 else [])
        + (["group_kl.png"] if config.levels > 1 else [])
    )


def missing_pictures(run: LoadedRun, data: DatasetSplits) -> None:
    """Draws the latent pictures the run's folder lacks."""
    needed = latent_pictures(run.config.model)
    if any(not (run.path / name).is_file() for name in needed) and len(data.val):
        write_latent_pictures(run.path, run.model, data)


def ensure_pictures(
    run_dir: str | Path,
    data: DatasetSplits | None = None,
    encoder: torch.nn.Module | None = None,
    decoder: torch.nn.Module | None = None,
) -> None:
    """Before a report: draws the latent pictures and interpolations a run lacks.

    Best effort: a run without a checkpoint, or whose data cannot be loaded here (or one with
    its own networks, without `encoder` and `decoder`), still gets its report, and the page
    lists what is missing.
    """
    run_dir = Path(run_dir)
    try:
        run = load_run(run_dir, encoder=encoder, decoder=decoder)
        needed = latent_pictures(run.config.model) + ["interpolations.png"]
        if all((run_dir / name).is_file() for name in needed):
            return
        data = data or load_run_data(run.config)
        missing_pictures(run, data)
        if not (run_dir / "interpolations.png").is_file():
            interpolate_run(run_dir, data=data, encoder=encoder, decoder=decoder)
    except VaekitError as exc:
        print(f"vaekit: warning: pictures not drawn ({exc})", file=sys.stderr)
