"""The training loop: batches, one optimizer step, a metrics row and a checkpoint per epoch."""

from __future__ import annotations

import math
import os
import random
import shutil
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from . import __version__
from .batching import batch_count, epoch_permutation, make_batch, shard
from .checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from .config import RunConfig
from .data import DatasetSplits, load_dataset
from .distributed import DistContext, init_distributed, shutdown_distributed
from .errors import VaekitError
from .evaluate import bound_means
from .model import VAE
from .objectives import training_loss
from .runs import CONFIG, default_run_dir, write_metrics

VALIDATION_SEED = 1234  # fixed, so validation numbers compare across runs and seeds
PICTURE_SEED = 4321


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was written. exit_code is 130 or 143."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def resolve_device(kind: str) -> torch.device:
    if kind == "cuda" and not torch.cuda.is_available():
        raise VaekitError("--device cuda was asked for but CUDA is not available; use --device cpu or auto")
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(kind)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def kl_weight(config: RunConfig, epoch: int, progress_in_epoch: float) -> float:
    """Linear KL warm-up from 0 to beta over `kl_warmup` epochs."""
    t = config.train
    if t.kl_warmup <= 0:
        return t.beta
    return t.beta * min(1.0, (epoch + progress_in_epoch) / t.kl_warmup)


def prepare_run_dir(out: Path, ctx: DistContext) -> None:
    """Refuses a file, a read-only folder or an existing run before anything is written."""
    if out.exists() and not out.is_dir():
        raise VaekitError(f"--out {out} is a file; pass a folder path")
    if (out / CONFIG).exists():
        raise VaekitError(f"--out {out} already holds a run; use `vaekit train --resume {out}` or another --out")
    probe = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not os.access(probe, os.W_OK | os.X_OK):
        raise VaekitError(f"--out {out} is not writable ({probe} is read-only); choose another folder")


def train(
    config: RunConfig,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    data: DatasetSplits | None = None,
    progress: bool = True,
) -> Path:
    """Trains a VAE as `config` says and returns the run directory.

    With `resume`, continues that run from its latest checkpoint exactly where it stopped.
    """
    config.validate()
    t = config.train
    device = resolve_device(t.device)
    ctx = init_distributed(device.type)
    run_dir = Path(resume or out or default_run_dir())
    created = resume is None and not run_dir.exists()
    try:
        return _train(config, run_dir, resume is not None, data, progress, device, ctx)
    except (VaekitError, KeyboardInterrupt):
        # A run that failed before its first checkpoint is not a run: leave nothing that
        # `--resume` or a later `--out` would trip over.
        if created and ctx.is_master and not has_checkpoint(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        shutdown_distributed(ctx)


def _train(config: RunConfig, run_dir: Path, resuming: bool, data, progress: bool, device: torch.device, ctx: DistContext) -> Path:
    t = config.train
    if device.type == "cuda" and ctx.enabled:
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    fresh = not resuming
    if fresh and ctx.is_master:
        prepare_run_dir(run_dir, ctx)
    if not fresh and not has_checkpoint(run_dir):
        raise VaekitError(f"{run_dir} has no checkpoint to resume from; start it again with `vaekit train --out {run_dir}` after removing it")

    data = data or load_dataset(config.data.dataset, config.data.data_dir, image_size=None if config.data.dataset in ("fashion-mnist", "mnist") else config.model.image_size)
    config.model.image_size, config.model.channels = data.image_size, data.channels
    train_images = data.train.images[: config.data.train_subset] if config.data.train_subset else data.train.images
    if t.batch_size % ctx.world_size:
        raise VaekitError(f"--batch-size {t.batch_size} must be divisible by the {ctx.world_size} processes")
    local_batch = t.batch_size // ctx.world_size
    if t.batch_size > len(train_images):
        raise VaekitError(f"--batch-size {t.batch_size} is larger than the {len(train_images)} training images; lower it")
    config.version = __version__

    seed_everything(t.seed)
    model = VAE(config.model).to(device)
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr)
    # Each rank draws its own binarisation and reparameterisation noise.
    torch.manual_seed(t.seed * 1_000_003 + 7919 * (ctx.rank + 1))
    state: dict[str, Any] = {"epoch": 0, "step": 0, "position": 0, "best_val_elbo": None, "history": [], "sums": None, "seconds": 0.0}
    if not fresh:
        ckpt = load_checkpoint(run_dir, "latest", with_training=True)
        model.load_state_dict(ckpt.model)
        optimizer.load_state_dict(ckpt.training["optimizer"])
        torch.set_rng_state(ckpt.training["rng"][ctx.rank] if ctx.rank < len(ckpt.training["rng"]) else ckpt.training["rng"][0])
        if device.type == "cuda" and "cuda_rng" in ckpt.training:
            torch.cuda.set_rng_state(ckpt.training["cuda_rng"][min(ctx.rank, len(ckpt.training["cuda_rng"]) - 1)], device)
        state.update({k: ckpt.state[k] for k in state})
    elif ctx.is_master:
        run_dir.mkdir(parents=True, exist_ok=True)
        config.save(run_dir / CONFIG)

    net = model
    if ctx.enabled:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    images = train_images.to(device)
    val_images = data.val.images.to(device)
    objective = "elbo" if config.train.is_elbo else f"beta-objective(beta={t.beta}, warmup={t.kl_warmup}, free_bits={t.free_bits})"
    if ctx.is_master and not config.train.is_elbo:
        print(f"vaekit: training a {objective}, not the ELBO; validation reports the true ELBO", file=sys.stderr)

    stop = _SignalFlag()
    with stop, (torch.autograd.detect_anomaly() if t.detect_anomaly else nullcontext()):
        while state["epoch"] < t.epochs:
            epoch = state["epoch"]
            order = shard(epoch_permutation(len(images), t.seed, epoch), ctx.rank, ctx.world_size).to(device)
            n_batches = batch_count(len(order), local_batch)
            sums = torch.tensor(state["sums"] or [0.0] * 5, dtype=torch.float64, device=device)  # elbo, recon, kl, loss, count
            started = time.perf_counter() - (state["seconds"] if state["position"] else 0.0)
            bar = tqdm(total=n_batches, initial=state["position"], desc=f"epoch {epoch + 1}/{t.epochs}", disable=not (progress and ctx.is_master), leave=False, dynamic_ncols=True)
            model.train()
            while state["position"] < n_batches:
                i = state["position"]
                x = make_batch(images, order[i * local_batch:(i + 1) * local_batch], config.data.binarize, memory_format)
                terms = net(x, iw_samples=t.iw_samples)
                loss = training_loss(terms, kl_weight(config, epoch, i / n_batches), t.free_bits)
                _check_finite(loss, terms, state["step"], run_dir)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip or math.inf)
                if not torch.isfinite(grad_norm):
                    raise VaekitError(f"non-finite gradient at step {state['step']}; the last good checkpoint is kept in {run_dir}; try a lower --lr or --grad-clip 1.0, and --detect-anomaly to find the operation")
                optimizer.step()
                with torch.no_grad():
                    b = x.shape[0]
                    sums += torch.stack([terms.elbo.sum(), terms.recon.sum(), terms.kl.sum(), loss.detach() * b, torch.tensor(float(b), device=device)]).to(torch.float64)
                state["position"] += 1
                state["step"] += 1
                bar.update(1)
                if ctx.is_master and progress and (i % 10 == 0 or state["position"] == n_batches):
                    s = sums.tolist()
                    bar.set_postfix(loss=f"{s[3] / s[4]:.2f}", recon=f"{-s[1] / s[4]:.2f}", kl=f"{s[2] / s[4]:.2f}")
                interrupted = ctx.broadcast_flag(stop.signum is not None, device)
                due = t.checkpoint_every and state["step"] % t.checkpoint_every == 0
                if (interrupted or due) and state["position"] < n_batches:
                    state["sums"], state["seconds"] = sums.tolist(), time.perf_counter() - started
                    _save(run_dir, model, optimizer, state, ctx, device)
                if interrupted:
                    bar.close()
                    code = 130 if stop.signum in (None, signal.SIGINT) else 143
                    raise TrainingInterrupted(code, f"vaekit: interrupted at step {state['step']}; checkpoint saved; continue with `vaekit train --resume {run_dir}`")
            bar.close()
            seconds = time.perf_counter() - started
            totals = ctx.all_reduce_sum(sums.clone()).tolist()
            val = bound_means(model, val_images, 256, config.data.binarize, VALIDATION_SEED, ctx)
            row = {
                "epoch": epoch + 1, "step": state["step"], "objective": "elbo" if config.train.is_elbo else "beta-objective",
                "train_elbo": totals[0] / totals[4], "train_recon": totals[1] / totals[4], "train_kl": totals[2] / totals[4],
                "train_loss": totals[3] / totals[4],
                "val_elbo": val["elbo"], "val_recon": val["recon"], "val_kl": val["kl"],
                "seconds": seconds, "images_per_s": totals[4] / seconds,
            }
            state["history"].append(row)
            is_best = state["best_val_elbo"] is None or val["elbo"] > state["best_val_elbo"]
            if is_best:
                state["best_val_elbo"] = val["elbo"]
            state.update(epoch=epoch + 1, position=0, sums=None, seconds=0.0)
            if ctx.is_master:
                write_metrics(run_dir, state["history"])
                _save(run_dir, model, optimizer, state, ctx, device, best=is_best)
                _refresh_pictures(run_dir, model, data, device)
                print(
                    f"epoch {epoch + 1}/{t.epochs}  train {row['objective']} {row['train_elbo']:.2f}  "
                    f"val elbo {val['elbo']:.2f} (recon {val['recon']:.2f}, kl {val['kl']:.2f})  "
                    f"{seconds:.1f}s  {row['images_per_s']:.0f} img/s",
                    file=sys.stderr,
                )
            else:
                _save(run_dir, model, optimizer, state, ctx, device)  # joins the RNG gather
    return run_dir


def _check_finite(loss: torch.Tensor, terms, step: int, run_dir: Path) -> None:
    if torch.isfinite(loss):
        return
    term = "reconstruction" if not torch.isfinite(terms.recon).all() else "KL"
    raise VaekitError(f"non-finite loss at step {step} in the {term} term; the last good checkpoint is kept in {run_dir}; try a lower --lr or --grad-clip 1.0, and --detect-anomaly to find the operation")


def _save(run_dir: Path, model, optimizer, state: dict, ctx: DistContext, device: torch.device, best: bool = False) -> None:
    """Every rank's RNG state is gathered so a resumed multi-process run replays exactly."""
    rng = torch.get_rng_state()
    if ctx.enabled:
        import torch.distributed as dist

        gathered = [None] * ctx.world_size
        dist.all_gather_object(gathered, rng)
        rng_all = gathered
    else:
        rng_all = [rng]
    if not ctx.is_master:
        return
    training = {"optimizer": optimizer.state_dict(), "rng": rng_all}
    if device.type == "cuda":
        training["cuda_rng"] = [torch.cuda.get_rng_state(device)]
    meta = {k: state[k] for k in ("epoch", "step", "position", "best_val_elbo", "history", "sums", "seconds")}
    meta["vaekit_version"] = __version__
    save_checkpoint(run_dir, model.state_dict(), meta, training, pointers=("latest", "best") if best else ("latest",))


def _refresh_pictures(run_dir: Path, model: VAE, data: DatasetSplits, device: torch.device) -> None:
    from .plots import plot_loss_curves, save_image_grid, save_reconstructions
    from .runs import read_metrics

    model.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(PICTURE_SEED)
        save_image_grid(model.sample(64).float().cpu(), run_dir / "samples.png", nrow=8)
        x = data.val.images[:32].to(device).float().div(255)
        save_reconstructions(model.crop(x).cpu(), model.reconstruct(x).float().cpu(), run_dir / "reconstructions.png")
    plot_loss_curves(read_metrics(run_dir), run_dir / "loss_curves.png")
    model.train()


class _SignalFlag:
    """Turns SIGINT/SIGTERM into a flag checked between steps, so a step is never cut in half."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "_SignalFlag":
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
