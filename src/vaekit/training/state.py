"""Where training stands, and the checkpoint that saves it with the weights, the optimizer and
the RNG states, so that a resumed run replays exactly."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vaekit._version import __version__
from vaekit.errors import VaekitError
from vaekit.objectives.bounds import Terms
from vaekit.runs.checkpoint import check_state_dict, load_checkpoint, save_checkpoint
from vaekit.training.distributed import DistContext
from vaekit.training.step import Trainer


@dataclass
class EpochSums:
    """Sums over the images of the epoch so far: the ELBO's terms and the loss (nats), and the count."""

    elbo: float = 0.0
    recon: float = 0.0
    kl: float = 0.0
    loss: float = 0.0
    images: float = 0.0

    def mean(self, name: str) -> float:
        """The per-image mean of the sum `name` ("elbo", "recon", "kl" or "loss")."""
        return getattr(self, name) / self.images


@dataclass
class TrainState:
    """Where training stands: epochs and steps done, the position in the current epoch, the best
    validation ELBO and the metrics history; saved in every checkpoint's state.json.
    """

    epoch: int = 0  # epochs finished
    step: int = 0  # optimizer steps taken
    position: int = 0  # batches of the current epoch done
    best_val_elbo: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # metrics.csv's rows, one per epoch
    sums: EpochSums | None = None  # the current epoch's, when it was saved mid-epoch
    seconds: float = 0.0  # the current epoch's training time, when it was saved mid-epoch

    @staticmethod
    def keys() -> list[str]:
        """The names of the state's fields, every one of which a checkpoint's state.json holds."""
        return [f.name for f in dataclasses.fields(TrainState)]

    def to_json(self) -> dict[str, Any]:
        """The state as a JSON-ready dict, `sums` as a list in field order."""
        state = {name: getattr(self, name) for name in self.keys()}
        state["sums"] = list(dataclasses.astuple(self.sums)) if self.sums is not None else None  # in field order
        return state

    @classmethod
    def from_json(cls, state: dict[str, Any]) -> TrainState:
        """From a checkpoint's state.json, which must hold every key (see `keys`)."""
        values = {name: state[name] for name in cls.keys()}
        values["sums"] = EpochSums(*values["sums"]) if values["sums"] is not None else None
        return cls(**values)


class RunningSums:
    """EpochSums kept on the device in one float64 tensor, so adding a step's costs no host sync."""

    def __init__(self, start: EpochSums | None, device: torch.device) -> None:
        self.total = torch.tensor(dataclasses.astuple(start or EpochSums()), dtype=torch.float64, device=device)

    @torch.no_grad()
    def add(self, terms: Terms, loss: torch.Tensor, images: int) -> None:
        """Adds a step's sums (the ELBO's terms over its images and its mean `loss` times `images`) on the device."""
        count = torch.tensor(float(images), device=self.total.device)
        step = torch.stack([terms.elbo.sum(), terms.recon.sum(), terms.kl.sum(), loss.detach() * images, count])
        self.total += step.to(torch.float64)

    def read(self, ctx: DistContext | None = None) -> EpochSums:
        """A host sync; with `ctx`, the sums over every rank."""
        total = ctx.all_reduce_sum(self.total.clone()) if ctx is not None else self.total
        return EpochSums(*total.tolist())


def save_training(run_dir: Path, trainer: Trainer, state: TrainState, device: torch.device, best: bool = False) -> None:
    """Rank 0 writes the checkpoint (and points `best` at it when asked); every rank's RNG state
    is gathered into it, so a resumed multi-process run replays exactly. Every rank calls it."""
    rngs = trainer.ctx.gather_objects(torch.get_rng_state())
    if not trainer.ctx.is_master:
        return
    training = {"optimizer": trainer.optimizer.state_dict(), "rng": rngs}
    if trainer.ema is not None:  # model.safetensors holds the average; resuming needs the trained weights too
        training["weights"] = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
    if device.type == "cuda":
        training["cuda_rng"] = [torch.cuda.get_rng_state(device)]
    meta = {**state.to_json(), "vaekit_version": __version__}
    pointers = ("latest", "best") if best else ("latest",)
    try:
        save_checkpoint(run_dir, trainer.evaluated.state_dict(), meta, training, pointers=pointers)
    except OSError as exc:  # disk full, folder removed: the previous checkpoint is still whole
        raise VaekitError(
            f"could not write a checkpoint in {run_dir} ({exc.strerror or exc}); "
            "the previous one is kept; free space and resume"
        ) from None


def restore_training(run_dir: Path, trainer: Trainer, device: torch.device) -> TrainState:
    """Model, optimizer, counters and this rank's RNG state from the latest checkpoint."""
    ckpt = load_checkpoint(run_dir, "latest", with_training=True)
    check_state_dict(trainer.model.state_dict(), ckpt.model, ckpt.path / "model.safetensors")
    training = ckpt.training if isinstance(ckpt.training, dict) else {}
    needed = ("optimizer", "rng", "weights") if trainer.ema is not None else ("optimizer", "rng")
    missing = sorted(set(TrainState.keys()) - set(ckpt.state)) + [k for k in needed if k not in training]
    if missing:
        raise VaekitError(f"{ckpt.path} lacks {', '.join(missing)}; it cannot be resumed exactly, start a new run")
    try:
        if trainer.ema is not None:
            trainer.ema.module.load_state_dict(ckpt.model)
            trainer.model.load_state_dict(training["weights"])
            trainer.ema.n_averaged.fill_(ckpt.state["step"])  # past the first update, which copies
        else:
            trainer.model.load_state_dict(ckpt.model)
        trainer.optimizer.load_state_dict(training["optimizer"])
        rngs = training["rng"]
        torch.set_rng_state(rngs[trainer.ctx.rank] if trainer.ctx.rank < len(rngs) else rngs[0])
        if device.type == "cuda" and "cuda_rng" in training:
            cuda_rngs = training["cuda_rng"]
            torch.cuda.set_rng_state(cuda_rngs[min(trainer.ctx.rank, len(cuda_rngs) - 1)], device)
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as exc:
        cause = (str(exc).splitlines() or [type(exc).__name__])[0]
        where = ckpt.path / "training_state.pt"
        raise VaekitError(f"{where} does not fit this model ({cause}); start a new run") from None
    return TrainState.from_json(ckpt.state)
