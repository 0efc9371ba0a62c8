"""One optimizer step, and the Trainer that holds what it needs: the model (through DDP with
several processes), the fused Adam, the training settings and the distributed context."""

from __future__ import annotations

import dataclasses
import functools
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, cast

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from vaekit.config import RunConfig, TrainConfig
from vaekit.errors import VaekitError
from vaekit.models.speed import compile_networks, training_networks
from vaekit.models.vae import VAE, check_networks_given
from vaekit.objectives.bounds import Terms, training_loss
from vaekit.training.distributed import DistContext
from vaekit.training.stops import non_finite_flags


@dataclass
class Trainer:
    """What an optimizer step needs: the model, the module the step calls (the model, or it wrapped in
    DistributedDataParallel), the optimizer, the training settings, the process context and the
    weights' moving average when `--ema` keeps one.
    """

    model: VAE
    net: Callable[..., Terms]  # the model, or the model through DistributedDataParallel
    optimizer: torch.optim.Optimizer
    settings: TrainConfig
    ctx: DistContext
    ema: AveragedModel | None = None  # the moving average of the weights, with --ema

    @property
    def evaluated(self) -> VAE:
        """The model validation, pictures and checkpoints' model.safetensors use: the average, if kept."""
        return cast(VAE, self.ema.module) if self.ema is not None else self.model


@dataclass
class StepOutput:
    """One step's result, left on the device: the bound's terms, the loss, and which of the
    reconstruction, KL or gradient was not finite (`bad`).
    """

    terms: Terms
    loss: torch.Tensor
    bad: torch.Tensor  # (3,) on the device: 1 where the reconstruction, KL or gradient was not finite on a rank
    anomaly: str | None  # the operation --detect-anomaly named


def training_step(trainer: Trainer, x: torch.Tensor, lr: float, kl_w: float) -> StepOutput:
    """One optimizer step on batch x, with no host sync: a non-finite loss or gradient on any
    rank makes every rank skip the update on the device; Stops reports it later."""
    t, optimizer = trainer.settings, trainer.optimizer
    for group in optimizer.param_groups:
        group["lr"] = lr
    terms = trainer.net(x, iw_samples=t.iw_samples, estimator=t.mixture_estimator)
    loss = training_loss(terms, kl_w, t.free_bits)
    optimizer.zero_grad(set_to_none=True)
    anomaly = _backward(loss, t.detect_anomaly)  # only under --detect-anomaly, where every step is settled
    grad_norm = torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), t.grad_clip or math.inf)
    bad = non_finite_flags(terms, grad_norm)
    if anomaly is not None:
        bad[2] = 1.0
    bad = trainer.ctx.all_reduce_max(bad)  # every rank skips the same steps
    optimizer.found_inf = bad.amax()  # type: ignore[attr-defined]  # read by the fused Adam: 1 leaves weights and moments as they were
    if optimizer.defaults.get("fused") or not optimizer.found_inf.item():  # type: ignore[attr-defined]  # unfused (Adamax): the host decides
        optimizer.step()
    if trainer.ema is not None:
        trainer.ema.update_parameters(trainer.model)
    return StepOutput(terms, loss, bad, anomaly)


def _backward(loss: torch.Tensor, detect_anomaly: bool) -> str | None:
    """loss.backward(); under --detect-anomaly a NaN makes autograd raise naming the operation,
    which is returned (first line) so training stops with one line instead of a traceback."""
    try:
        loss.backward()
    except RuntimeError as exc:
        if not detect_anomaly:
            raise
        return (str(exc).strip().splitlines() or ["anomaly"])[0]
    return None


def kl_weight(config: RunConfig, epoch: int, progress_in_epoch: float) -> float:
    """Linear KL warm-up from 0 to beta over the warm-up's epochs, step by step."""
    t = config.train
    if t.warmup_epochs <= 0:
        return t.beta
    return t.beta * min(1.0, (epoch + progress_in_epoch) / t.warmup_epochs)


# --------------------------------------------------------------------------- building the trainer


def build_trainer(
    config: RunConfig, given: VAE | None, resumed_from: Path | None, ctx: DistContext, device: torch.device
) -> Trainer:
    """The model (seeded: the same seed gives the same initial weights) and its optimizer.

    `given` is the caller's own VAE, checked against config.model; `resumed_from` only words the
    error when a run with its own networks is resumed without them.
    """
    t = config.train
    seed_everything(t.seed)
    model = _model_to_train(config, given, resumed_from).to(device)
    model = model.to(memory_format=memory_format(t, model))  # type: ignore[call-overload]  # torch's stub omits it
    training_networks(model, device, t.precision)  # the fast twins; bf16 networks on a GPU if asked
    optimizer = make_optimizer(model, t.lr, t.optimizer)
    ema = moving_average(model, t.ema) if t.ema else None
    # After the moving average's copy, which must stay an eager module of its own; evaluation
    # during training runs an eager copy too (inference_model), so these never see eval mode.
    if t.compile:
        compile_networks(model, dynamic=True)
    # Each rank draws its own binarisation and reparameterisation noise.
    torch.manual_seed(t.seed * 1_000_003 + 7919 * (ctx.rank + 1))
    return Trainer(model, model, optimizer, t, ctx, ema)  # see data_parallel for several processes


def moving_average(model: VAE, decay: float) -> AveragedModel:
    """An exponential moving average of `model`'s weights and BatchNorm statistics (a copy,
    updated after each step; the first update copies). Its decay warms up as
    min(decay, (1 + n) / (10 + n)) after n updates, so that the first weights, which a short run
    would otherwise still carry a share of at its end, are forgotten at the pace training moves."""

    def update(
        averaged: list[torch.Tensor] | tuple[torch.Tensor, ...],
        current: list[torch.Tensor] | tuple[torch.Tensor, ...],
        _: torch.Tensor | int,
    ) -> None:
        n = int(average.n_averaged)  # kept on the CPU: no device sync
        d = ema_decay(decay, n)
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, 1 - d)
        else:  # BatchNorm's step counters
            torch._foreach_copy_(averaged, current)

    average = AveragedModel(model, multi_avg_fn=update, use_buffers=True)
    return average


def ema_decay(decay: float, updates: int) -> float:
    """The decay of the moving average's update after `updates` earlier ones."""
    return min(decay, (1 + updates) / (10 + updates))


def seed_everything(seed: int) -> None:
    """Seeds Python's, NumPy's and torch's (every device's) random generators with `seed`."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def make_optimizer(model: torch.nn.Module, lr: float, name: str = "adam") -> torch.optim.Optimizer:
    """Adam, fused: one kernel for all parameters, and it skips a step whose `found_inf` is set
    without the host looking at it (what lets a GPU step run without a sync). Adamax has no fused
    kernel in PyTorch, so training_step asks the host whether to step."""
    if name == "adamax":
        return torch.optim.Adamax(model.parameters(), lr=lr, foreach=True)
    return torch.optim.Adam(model.parameters(), lr=lr, fused=True)


def memory_format(t: TrainConfig, model: VAE) -> torch.memory_format:
    """The memory format of training batches: channels_last where the settings ask for it and the
    networks are the built-in ones, NCHW for a user's own.
    """
    # channels_last was measured for the conv networks; a user's networks get plain NCHW
    # batches, which a module that .view()s its input needs.
    return torch.channels_last if t.channels_last and not model.custom_networks else torch.contiguous_format


def _model_to_train(config: RunConfig, given: VAE | None, resumed_from: Path | None) -> VAE:
    """A new VAE for config.model, or the caller's one checked against it."""
    if given is None:
        what = "the config" if resumed_from is None else f"the config of {resumed_from}"
        where = "out=..." if resumed_from is None else f"resume={str(resumed_from)!r}"
        how = f"vaekit.train(config, model=vaekit.VAE(config.model, encoder=..., decoder=...), {where})"
        check_networks_given(config.model, None, None, what=what, how=how)
        return VAE(config.model)
    if not isinstance(given, VAE):
        raise VaekitError(
            f"model= must be a vaekit.VAE, got {type(given).__name__}; "
            "wrap your networks: VAE(config.model, encoder=..., decoder=...)"
        )
    for f in dataclasses.fields(config.model):
        if f.name in ("custom_encoder", "custom_decoder"):
            continue
        wanted, built = getattr(config.model, f.name), getattr(given.config, f.name)
        if wanted != built:
            raise VaekitError(
                f"model= was built with {f.name}={built!r} but the config (and its data) has {wanted!r}; "
                "build the VAE from this config.model"
            )
    config.model = given.config  # config.json records the user's networks' class names
    return given


# --------------------------------------------------------------------------- several processes


def data_parallel(model: VAE, device: torch.device) -> Callable[..., Terms]:
    """model(x, iw_samples=S, estimator=E) through DistributedDataParallel, as Terms, for an initialised
    process group."""
    # static_graph: with K=1 the mixture-logits head never gets a gradient, always the same set.
    device_ids = [device.index] if device.type == "cuda" else None
    ddp = torch.nn.parallel.DistributedDataParallel(_TupleTerms(model), device_ids=device_ids, static_graph=True)
    return functools.partial(_ddp_terms, ddp)


def _ddp_terms(ddp: torch.nn.Module, x: torch.Tensor, iw_samples: int = 1, estimator: str = "marginal") -> Terms:
    return Terms(*ddp(x, iw_samples=iw_samples, estimator=estimator))


class _TupleTerms(torch.nn.Module):
    """What DDP wraps: the model's terms as a tuple. DDP cannot see the tensors inside the Terms
    dataclass; with the unused K=1 logits head it then skipped the gradient all-reduce without a
    word (ranks drifted apart; the weight-hash test caught it). A tuple it can follow: every
    field in order, so the flags that choose the loss (importance_weighted) come back too."""

    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, iw_samples: int = 1, estimator: str = "marginal") -> tuple[Any, ...]:
        terms = self.model(x, iw_samples=iw_samples, estimator=estimator)
        # astuple would deep-copy the graph away
        return tuple(getattr(terms, f.name) for f in dataclasses.fields(terms))
