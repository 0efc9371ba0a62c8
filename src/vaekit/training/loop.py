"""The training loop: batches, one optimizer step each, a metrics row and a checkpoint per epoch.

`train` opens a run (new or resumed) and runs its epochs. A batch goes batch -> `training_step`
-> accumulate -> maybe save -> maybe stop; `Stops` owns the reasons to stop early and
`TrainState` is what a checkpoint saves to resume exactly where training stopped.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from tqdm import tqdm

from vaekit._version import __version__
from vaekit.config import RunConfig, TrainConfig, group_names
from vaekit.data import DatasetSplits
from vaekit.data.batching import batch_count, binarize_fixed, epoch_permutation, make_batch, shard, to_float
from vaekit.devices import resolve_device, resolve_precision
from vaekit.errors import VaekitError
from vaekit.models.speed import inference_model
from vaekit.models.vae import VAE
from vaekit.objectives.usage import USAGE_COLUMNS, component_usage, posterior_weights
from vaekit.report.pictures import refresh_pictures
from vaekit.runs.checkpoint import has_checkpoint
from vaekit.runs.run_dir import CONFIG, default_run_dir, load_run_data, prepare_run_dir, write_metrics
from vaekit.training.distributed import (
    DistContext,
    WeightHashLog,
    init_distributed,
    process_device,
    shutdown_distributed,
)
from vaekit.training.state import EpochSums, RunningSums, TrainState, restore_training, save_training
from vaekit.training.step import (
    StepOutput,
    Trainer,
    build_trainer,
    data_parallel,
    kl_weight,
    memory_format,
    training_step,
)
from vaekit.training.stops import Stop, Stops
from vaekit.training.tensorboard_log import TensorBoardLogger, open_logger
from vaekit.training.validation import bound_means

VALIDATION_SEED = 1234  # fixed, so validation numbers compare across runs and seeds
PICTURES_EVERY_S = 30.0  # wall clock between refreshes of a run's pictures (the last epoch always draws them)


def train(
    config: RunConfig,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    data: DatasetSplits | None = None,
    progress: bool = True,
    model: VAE | None = None,
) -> Path:
    """Trains a VAE as `config` says and returns the run directory, whose config.json holds the
    resolved config (the data's image size and channels, the networks' names); `config` itself
    is left as it was.

    With `resume`, continues that run from its latest checkpoint exactly where it stopped.

    `model` trains that VAE (e.g. one with your own networks, see VAE) in place instead of
    building one; it must have been built from `config.model` (for the data's image size and
    channels), and config.json records its networks' class names. Resuming such a run needs the
    model again: train(config, model=VAE(config.model, encoder=..., decoder=...), resume=run_dir).
    """
    config = config.resolved().validate()  # a copy: the caller's config is left as it was
    ctx = init_distributed(resolve_device(config.train.device).type)
    run_dir = Path(resume or out or default_run_dir())
    created = resume is None and not run_dir.exists()
    run: Run | None = None
    try:
        run = _open_run(config, run_dir, resume is not None, data, model, ctx)
        _fit(run, progress)
        return run_dir
    except (VaekitError, KeyboardInterrupt, OSError):
        # A run that failed before its first checkpoint is not a run: leave nothing that
        # `--resume` or a later `--out` would trip over.
        if created and ctx.is_master and not has_checkpoint(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        if run is not None:
            run.trainer.net = run.trainer.model  # DDP holds the process group, which must end with it
        shutdown_distributed(ctx)


# --------------------------------------------------------------------------- the loop


@dataclass
class Run:
    """A training run in progress: its settings and folder, its data on the device, the trainer and the state."""

    config: RunConfig
    run_dir: Path
    data: DatasetSplits
    images: torch.Tensor  # the training images, uint8 on the device
    val_images: torch.Tensor
    trainer: Trainer
    state: TrainState
    device: torch.device
    memory_format: torch.memory_format
    weight_log: WeightHashLog
    tb: TensorBoardLogger | None
    pictures_drawn_at: float = -math.inf  # perf_counter() of the last refresh_pictures

    @property
    def settings(self) -> TrainConfig:
        """The training section of the run's config."""
        return self.config.train

    @property
    def local_batch(self) -> int:
        """This process's share of the batch: the batch size over the number of processes."""
        return self.settings.batch_size // self.trainer.ctx.world_size


@dataclass
class Epoch:
    """The epoch in progress."""

    number: int  # 0-based
    order: torch.Tensor  # this rank's image indices, in batch order
    batches: int
    sums: RunningSums
    started: float  # perf_counter() when it started, less the time it ran before a resume

    def seconds(self) -> float:
        """Seconds the epoch has run, the part before a resume included."""
        return time.perf_counter() - self.started


def _fit(run: Run, progress: bool) -> None:
    """Epochs until the last one, a signal or the time budget."""
    t = run.settings
    stops = Stops(run.trainer.model, t, run.trainer.ctx, run.run_dir, run.device)
    try:
        with stops, torch.autograd.detect_anomaly() if t.detect_anomaly else nullcontext():
            while run.state.epoch < t.epochs:
                stop = _train_epoch(run, stops, progress)
                if stop is Stop.SIGNAL:
                    raise stops.interrupted(run.state.step)
                if stop is Stop.BUDGET:
                    break
    finally:
        if run.tb:
            run.tb.close()


def _train_epoch(run: Run, stops: Stops, progress: bool) -> Stop | None:
    """The rest of the current epoch, and its end unless it stopped early; why it stopped, if it did."""
    state = run.state
    epoch = _begin_epoch(run)
    stop = None
    with _progress_bar(run, epoch, progress) as bar:
        while stop is None and state.position < epoch.batches:
            stop = _train_batch(run, stops, epoch)
            _show_progress(bar, epoch, state.position, stops.every)
    if state.position < epoch.batches:  # stopped mid-epoch; the checkpoint saved then resumes exactly
        if stop is Stop.BUDGET and run.trainer.ctx.is_master:
            print(
                f"vaekit: time budget of {run.settings.max_minutes:g} minutes used up after step {state.step} "
                f"(epoch {epoch.number + 1}, batch {state.position}/{epoch.batches}); checkpoint saved",
                file=sys.stderr,
            )
        return stop
    _end_epoch(run, epoch.sums, epoch.seconds())
    return stop  # a stop on the epoch's last step: its checkpoint is the epoch's


def _begin_epoch(run: Run) -> Epoch:
    state, ctx = run.state, run.trainer.ctx
    order = shard(epoch_permutation(len(run.images), run.settings.seed, state.epoch), ctx.rank, ctx.world_size)
    sums = RunningSums(state.sums, run.device)
    started = time.perf_counter() - (state.seconds if state.position else 0.0)
    run.trainer.model.train()
    return Epoch(state.epoch, order.to(run.device), batch_count(len(order), run.local_batch), sums, started)


def _train_batch(run: Run, stops: Stops, epoch: Epoch) -> Stop | None:
    """Batch -> step -> accumulate -> maybe save; returns why to stop, if training should."""
    state, t = run.state, run.settings
    i = state.position
    index = epoch.order[i * run.local_batch : (i + 1) * run.local_batch]
    x = make_batch(run.images, index, run.config.data.binarize, run.memory_format)
    lr = t.lr_at(state.step, t.epochs * epoch.batches)
    out = training_step(run.trainer, x, lr, kl_weight(run.config, epoch.number, i / epoch.batches))
    state.position += 1
    state.step += 1
    _accumulate(run, stops, epoch, out, x.shape[0])
    save_due = bool(t.checkpoint_every) and state.step % t.checkpoint_every == 0
    stop = stops.check(state.step, x) if save_due or stops.due(state.position, epoch.batches) else None
    if (stop is not None or save_due) and state.position < epoch.batches:  # the epoch's end saves anyway
        state.sums, state.seconds = epoch.sums.read(), epoch.seconds()
        save_training(run.run_dir, run.trainer, state, run.device)
    return stop


def _accumulate(run: Run, stops: Stops, epoch: Epoch, out: StepOutput, images: int) -> None:
    """The step's running sums and non-finite flags (both stay on the device) and its logs."""
    epoch.sums.add(out.terms, out.loss, images)
    stops.record(run.state.step, out.bad, out.anomaly)
    run.weight_log(run.state.step, run.trainer.model)
    if run.tb:
        run.tb.step(run.state.step, out.loss, out.terms)


def _progress_bar(run: Run, epoch: Epoch, progress: bool) -> tqdm:
    return tqdm(
        total=epoch.batches,
        initial=run.state.position,
        desc=f"epoch {epoch.number + 1}/{run.settings.epochs}",
        disable=not (progress and run.trainer.ctx.is_master),
        leave=False,
        dynamic_ncols=True,
    )


def _show_progress(bar: tqdm, epoch: Epoch, position: int, every: int) -> None:
    bar.update(1)
    if not bar.disable and (position % max(10, every) == 1 or position == epoch.batches):
        s = epoch.sums.read()  # a host sync: every 10 steps on a CPU, every CUDA_CHECK_EVERY on a GPU
        bar.set_postfix(loss=f"{s.mean('loss'):.2f}", recon=f"{-s.mean('recon'):.2f}", kl=f"{s.mean('kl'):.2f}")


def _end_epoch(run: Run, sums: RunningSums, seconds: float) -> None:
    """Validation, the metrics row, the checkpoint (and `best` pointer) and the pictures."""
    state, ctx = run.state, run.trainer.ctx
    totals = sums.read(ctx)
    ctx.sync_buffers(run.trainer.model)  # evaluate and save rank 0's BatchNorm statistics on every rank
    if run.trainer.ema is not None:
        ctx.sync_buffers(run.trainer.ema.module)
    # A copy, so that networks compiled for training (--compile) are not compiled again for eval
    # mode; folding its BatchNorm costs nothing (10,000 validation images took ~5 s either way).
    evaluated = cast(VAE, inference_model(run.trainer.evaluated))
    row = _metrics_row(run, evaluated, totals, seconds)
    state.history.append(row)
    is_best = state.best_val_elbo is None or row["val_elbo"] > state.best_val_elbo
    if is_best:
        state.best_val_elbo = row["val_elbo"]
    state.epoch, state.position, state.sums, state.seconds = state.epoch + 1, 0, None, 0.0
    if ctx.is_master:
        write_metrics(run.run_dir, state.history)
    save_training(run.run_dir, run.trainer, state, run.device, best=is_best)  # every rank: it gathers their RNGs
    if not ctx.is_master:
        return
    # Drawing the pictures takes seconds of matplotlib: on a GPU, where an epoch takes seconds
    # too, every epoch would nearly halve the training rate.
    last = state.epoch == run.settings.epochs
    if last or time.perf_counter() - run.pictures_drawn_at >= PICTURES_EVERY_S:
        refresh_pictures(run.run_dir, evaluated, run.data, run.device)
        run.pictures_drawn_at = time.perf_counter()
    if run.tb:
        run.tb.epoch(state.epoch, evaluated, run.data, row)
    print(
        f"epoch {state.epoch}/{run.settings.epochs}  train {row['objective']} {row['train_elbo']:.2f}  "
        f"val elbo {row['val_elbo']:.2f} (recon {row['val_recon']:.2f}, kl {row['val_kl']:.2f})  "
        f"{seconds:.1f}s  {row['images_per_s']:.0f} img/s",
        file=sys.stderr,
    )


def _metrics_row(run: Run, model: VAE, totals: EpochSums, seconds: float) -> dict[str, Any]:
    """metrics.csv's row for the epoch just trained, with `model`'s bounds on the validation set."""
    binarize = run.config.data.binarize
    val = bound_means(model, run.val_images, 256, binarize, VALIDATION_SEED, run.trainer.ctx)
    row = {
        "epoch": run.state.epoch + 1,
        "step": run.state.step,
        "objective": run.settings.objective_in(run.state.epoch),  # what train_elbo holds
        "train_elbo": totals.mean("elbo"),
        "train_recon": totals.mean("recon"),
        "train_kl": totals.mean("kl"),
        "train_loss": totals.mean("loss"),
        "val_elbo": val["elbo"],
        "val_recon": val["recon"],
        "val_kl": val["kl"],
        "seconds": seconds,
        "images_per_s": totals.images / seconds,
    }
    # with levels >= 2: each group's validation KL (the report plots them; a group near zero is inactive)
    row.update(
        {f"val_kl_{name}": kl for name, kl in zip(group_names(run.config.model.levels), val.get("kl_groups", []))}
    )
    if run.config.model.components > 1:  # is the mixture collapsing? (the report plots these over epochs)
        x_val = binarize_fixed(run.val_images, VALIDATION_SEED) if binarize else to_float(run.val_images)
        usage = component_usage(posterior_weights(model, x_val))
        row.update({k: usage[k] for k in USAGE_COLUMNS})
    return row


# --------------------------------------------------------------------------- opening a run


def _open_run(
    config: RunConfig, run_dir: Path, resuming: bool, data: DatasetSplits | None, given: VAE | None, ctx: DistContext
) -> Run:
    """Checks the folder and the data, then builds the trainer and the state (new, or from the checkpoint)."""
    t = config.train
    device = process_device(resolve_device(t.device), ctx)
    if not resuming:
        prepare_run_dir(run_dir)  # every rank checks (it only reads) ...
        ctx.barrier()  # ... before rank 0 writes config.json, which a late rank would take for an existing run
    elif not has_checkpoint(run_dir):
        raise VaekitError(
            f"{run_dir} has no checkpoint to resume from; "
            f"start it again with `vaekit train --out {run_dir}` after removing it"
        )
    data = data or load_run_data(config)
    config.model.image_size, config.model.channels = data.image_size, data.channels
    images = data.train.images[: config.data.train_subset] if config.data.train_subset else data.train.images
    _check_batch_size(t.batch_size, len(images), ctx)
    config.version = __version__
    t.precision = resolve_precision(t.precision, device, warn=ctx.is_master)  # config.json records what the run used
    trainer = build_trainer(config, given, run_dir if resuming else None, ctx, device)
    state = restore_training(run_dir, trainer, device) if resuming else _start(config, run_dir, ctx)
    if resuming and ctx.is_master:  # the checkpoint fits: config.json now records the new --epochs, budget or precision
        config.save(run_dir / CONFIG)
    if ctx.enabled:
        trainer.net = data_parallel(trainer.model, device)
    tb = open_logger(run_dir, t.tensorboard and ctx.is_master)
    x_train, x_val, fmt = images.to(device), data.val.images.to(device), memory_format(t, trainer.model)
    return Run(config, run_dir, data, x_train, x_val, trainer, state, device, fmt, WeightHashLog(ctx.rank), tb)


def _check_batch_size(batch_size: int, images: int, ctx: DistContext) -> None:
    if batch_size % ctx.world_size:
        raise VaekitError(f"--batch-size {batch_size} must be divisible by the {ctx.world_size} processes")
    if batch_size > images:
        raise VaekitError(f"--batch-size {batch_size} is larger than the {images} training images; lower it")


def _start(config: RunConfig, run_dir: Path, ctx: DistContext) -> TrainState:
    if ctx.is_master:
        run_dir.mkdir(parents=True, exist_ok=True)
        config.save(run_dir / CONFIG)
    return TrainState()
