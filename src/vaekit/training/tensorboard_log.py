"""Optional TensorBoard logging (`vaekit train --tensorboard`), imported only when asked for.

The trainer calls three methods: `step` (scalars per optimizer step), `epoch` (validation
scalars, sample and reconstruction images, the latent embedding with images) and `close`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vaekit.data.batching import to_float
from vaekit.errors import VaekitError

EMBEDDING_IMAGES = 500  # the projector shows a thumbnail per point; more is slow to load


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise VaekitError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter


class TensorBoardLogger:
    """Writes a run's TensorBoard events into `log_dir`; needs the tensorboard package."""

    def __init__(self, log_dir: str | Path) -> None:
        self.writer = _summary_writer()(log_dir=str(log_dir))

    def step(self, step: int, loss: torch.Tensor, terms) -> None:
        """Batch means of the training loss and the ELBO's terms (nats)."""
        scalars = {"loss": loss, "elbo": terms.elbo.mean(), "recon": terms.recon.mean(), "kl": terms.kl.mean()}
        for name, value in scalars.items():
            self.writer.add_scalar(f"train/{name}", float(value.detach()), step)

    @torch.no_grad()
    def epoch(self, epoch: int, model, data, row: dict) -> None:
        """The epoch's validation scalars (a hierarchy's KL per group too), 32 prior samples (seeded
        by the epoch), reconstructions of 16 validation images, and the posterior means of up to 500
        of them as a labelled embedding.
        """
        for name, value in row.items():  # val_elbo, val_recon, val_kl and a hierarchy's val_kl_z<l>
            if name.startswith("val_") and value is not None:
                self.writer.add_scalar(f"val/{name[4:]}", float(value), epoch)
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(epoch)
            self.writer.add_images("samples", model.sample(32).float().clamp(0, 1).cpu(), epoch)
        x = to_float(data.val.images[:EMBEDDING_IMAGES].to(device))
        recon = model.reconstruct(x[:16]).float().cpu()
        originals = model.crop(x[:16]).cpu()
        self.writer.add_images("reconstructions", torch.cat([originals, recon]).clamp(0, 1), epoch)
        means = model.encode(x).mean.float().cpu()
        labels = data.val.labels[:EMBEDDING_IMAGES].tolist() if data.val.labels is not None else None
        self.writer.add_embedding(
            means, metadata=labels, label_img=model.crop(x).float().cpu(), global_step=epoch, tag="posterior_mean"
        )
        model.train(was_training)
        self.writer.flush()

    def close(self) -> None:
        """Flushes and closes the event files."""
        self.writer.close()


def open_logger(run_dir: Path, enabled: bool) -> TensorBoardLogger | None:
    """A logger writing to RUN/tensorboard when enabled, else None (the trainer skips its calls)."""
    return TensorBoardLogger(Path(run_dir) / "tensorboard") if enabled else None


def check_available(enabled: bool) -> None:
    """Fails fast, before a run directory is made, when --tensorboard cannot work."""
    if enabled:
        _summary_writer()
