"""Where training stands, as a checkpoint's state.json saves it so that a resumed run replays exactly."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from .distributed import DistContext
from .objectives import Terms


@dataclass
class EpochSums:
    """Sums over the images of the epoch so far: the ELBO's terms and the loss (nats), and the count."""

    elbo: float = 0.0
    recon: float = 0.0
    kl: float = 0.0
    loss: float = 0.0
    images: float = 0.0

    def mean(self, name: str) -> float:
        return getattr(self, name) / self.images


@dataclass
class TrainState:
    epoch: int = 0  # epochs finished
    step: int = 0  # optimizer steps taken
    position: int = 0  # batches of the current epoch done
    best_val_elbo: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # metrics.csv's rows, one per epoch
    sums: EpochSums | None = None  # the current epoch's, when it was saved mid-epoch
    seconds: float = 0.0  # the current epoch's training time, when it was saved mid-epoch

    @staticmethod
    def keys() -> list[str]:
        return [f.name for f in dataclasses.fields(TrainState)]

    def to_json(self) -> dict[str, Any]:
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
        count = torch.tensor(float(images), device=self.total.device)
        step = torch.stack([terms.elbo.sum(), terms.recon.sum(), terms.kl.sum(), loss.detach() * images, count])
        self.total += step.to(torch.float64)

    def read(self, ctx: DistContext | None = None) -> EpochSums:
        """A host sync; with `ctx`, the sums over every rank."""
        total = ctx.all_reduce_sum(self.total.clone()) if ctx is not None else self.total
        return EpochSums(*total.tolist())
