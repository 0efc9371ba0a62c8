"""The training loop: batches, one optimizer step, a metrics row and a checkpoint per epoch."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import random
import shutil
import signal
import sys
import time
import types
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from . import __version__
from .batching import batch_count, binarize_fixed, epoch_permutation, make_batch, shard, to_float
from .checkpoint import check_state_dict, has_checkpoint, load_checkpoint, resolve_pointer, save_checkpoint
from .config import RunConfig
from .data import DatasetSplits, load_dataset
from .distributed import DistContext, WeightHashLog, init_distributed, shutdown_distributed
from .errors import VaekitError
from .evaluate import bound_means
from .model import VAE, check_networks_given
from .objectives import Terms, training_loss
from .runs import CONFIG, default_run_dir, write_metrics
from .speed import training_networks
from .usage import USAGE_COLUMNS, component_usage, posterior_weights

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
    if not probe.is_dir():
        raise VaekitError(f"--out {out} cannot be created: {probe} is a file, not a folder; choose another --out")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise VaekitError(f"--out {out} is not writable ({probe} is read-only); choose another folder")


def train(
    config: RunConfig,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    data: DatasetSplits | None = None,
    progress: bool = True,
    model: VAE | None = None,
) -> Path:
    """Trains a VAE as `config` says and returns the run directory.

    With `resume`, continues that run from its latest checkpoint exactly where it stopped.

    `model` trains that VAE (e.g. one with your own networks, see VAE) in place instead of
    building one; it must have been built from `config.model` (for the data's image size and
    channels), and config.json records its networks' class names. Resuming such a run needs the
    model again: train(config, model=VAE(config.model, encoder=..., decoder=...), resume=run_dir).
    """
    config = config.resolved().validate()  # a copy: the caller's config is left as it was
    t = config.train
    device = resolve_device(t.device)
    ctx = init_distributed(device.type)
    run_dir = Path(resume or out or default_run_dir())
    created = resume is None and not run_dir.exists()
    try:
        return _train(config, run_dir, resume is not None, data, progress, device, ctx, model)
    except (VaekitError, KeyboardInterrupt, OSError):
        # A run that failed before its first checkpoint is not a run: leave nothing that
        # `--resume` or a later `--out` would trip over.
        if created and ctx.is_master and not has_checkpoint(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        shutdown_distributed(ctx)


def _train(config: RunConfig, run_dir: Path, resuming: bool, data, progress: bool, device: torch.device, ctx: DistContext,
           given: VAE | None = None) -> Path:
    t = config.train
    if device.type == "cuda" and ctx.enabled:
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    fresh = not resuming
    if fresh:
        prepare_run_dir(run_dir, ctx)  # every rank checks (it only reads) ...
        ctx.barrier()  # ... before rank 0 writes config.json, which a late rank would take for an existing run
    if not fresh and not has_checkpoint(run_dir):
        raise VaekitError(f"{run_dir} has no checkpoint to resume from; start it again with `vaekit train --out {run_dir}` after removing it")

    data = data or load_dataset(config.data.dataset, config.data.data_dir, image_size=config.dataset_image_size(),
                                val_size=config.data.val_size)
    config.model.image_size, config.model.channels = data.image_size, data.channels
    train_images = data.train.images[: config.data.train_subset] if config.data.train_subset else data.train.images
    if t.batch_size % ctx.world_size:
        raise VaekitError(f"--batch-size {t.batch_size} must be divisible by the {ctx.world_size} processes")
    local_batch = t.batch_size // ctx.world_size
    if t.batch_size > len(train_images):
        raise VaekitError(f"--batch-size {t.batch_size} is larger than the {len(train_images)} training images; lower it")
    config.version = __version__

    seed_everything(t.seed)
    model = _model_to_train(config, given, run_dir, resuming).to(device)
    # channels_last was measured for the conv networks; a user's networks get plain NCHW
    # batches, which a module that .view()s its input needs.
    memory_format = torch.channels_last if t.channels_last and not model.custom_networks else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    training_networks(model, device)  # the fast twins; bf16 networks on a GPU, fp32 bounds
    optimizer = make_optimizer(model, t.lr)
    # Each rank draws its own binarisation and reparameterisation noise.
    torch.manual_seed(t.seed * 1_000_003 + 7919 * (ctx.rank + 1))
    state: dict[str, Any] = {"epoch": 0, "step": 0, "position": 0, "best_val_elbo": None, "history": [], "sums": None, "seconds": 0.0}
    if not fresh:
        _restore(run_dir, model, optimizer, state, ctx, device)
    elif ctx.is_master:
        run_dir.mkdir(parents=True, exist_ok=True)
        config.save(run_dir / CONFIG)

    net = data_parallel(model, device) if ctx.enabled else model
    log_weights = WeightHashLog(ctx.rank)
    from .tensorboard_log import open_logger  # tensorboard itself is imported only when asked for
    tb = open_logger(run_dir, t.tensorboard and ctx.is_master)
    images = train_images.to(device)
    val_images = data.val.images.to(device)
    if ctx.is_master and not config.train.is_elbo:
        print(f"vaekit: training a {t.objective_name}, not the ELBO; validation reports the true ELBO", file=sys.stderr)

    stop = _SignalFlag()
    checks = StepChecks(check_every(device, t.detect_anomaly), device)
    budget_start = time.perf_counter()  # TrainConfig.max_minutes counts from here (this process's start or resume)
    out_of_time = lambda: t.max_minutes is not None and time.perf_counter() - budget_start > 60 * t.max_minutes  # noqa: E731
    with stop, (torch.autograd.detect_anomaly() if t.detect_anomaly else nullcontext()):
        while state["epoch"] < t.epochs:
            epoch = state["epoch"]
            order = shard(epoch_permutation(len(images), t.seed, epoch), ctx.rank, ctx.world_size).to(device)
            n_batches = batch_count(len(order), local_batch)
            sums = torch.tensor(state["sums"] or [0.0] * 5, dtype=torch.float64, device=device)  # elbo, recon, kl, loss, count
            started = time.perf_counter() - (state["seconds"] if state["position"] else 0.0)
            model.train()
            with tqdm(total=n_batches, initial=state["position"], desc=f"epoch {epoch + 1}/{t.epochs}", disable=not (progress and ctx.is_master), leave=False, dynamic_ncols=True) as bar:
                while state["position"] < n_batches:
                    i = state["position"]
                    x = make_batch(images, order[i * local_batch:(i + 1) * local_batch], config.data.binarize, memory_format)
                    for group in optimizer.param_groups:
                        group["lr"] = t.lr_at(state["step"], t.epochs * n_batches)
                    terms, loss = _step(net, model, optimizer, x, kl_weight(config, epoch, i / n_batches), t, ctx, device, run_dir, state["step"] + 1, checks)
                    state["position"] += 1
                    state["step"] += 1
                    due = t.checkpoint_every and state["step"] % t.checkpoint_every == 0
                    interrupted = stopping = False
                    if due or state["position"] % checks.every == 0 or state["position"] == n_batches:
                        interrupted, stopping = checks.settle([stop.signum is not None, out_of_time()], ctx, lambda step, recon, kl: _non_finite(
                            model, x if step == state["step"] else None, t, ctx, device, run_dir, step, recon, kl, checks.anomaly))
                    log_weights(state["step"], model)
                    if tb:
                        tb.step(state["step"], loss, terms)
                    with torch.no_grad():
                        sums += torch.stack([terms.elbo.sum(), terms.recon.sum(), terms.kl.sum(), loss.detach() * x.shape[0],
                                             torch.tensor(float(x.shape[0]), device=device)]).to(torch.float64)
                    bar.update(1)
                    if ctx.is_master and progress and (state["position"] % max(10, checks.every) == 1 or state["position"] == n_batches):
                        s = sums.tolist()  # a host sync: every 10 steps on a CPU, every CUDA_CHECK_EVERY on a GPU
                        bar.set_postfix(loss=f"{s[3] / s[4]:.2f}", recon=f"{-s[1] / s[4]:.2f}", kl=f"{s[2] / s[4]:.2f}")
                    if (interrupted or stopping or due) and state["position"] < n_batches:  # the epoch's end saves anyway
                        state["sums"], state["seconds"] = sums.tolist(), time.perf_counter() - started
                        _save(run_dir, model, optimizer, state, ctx, device)
                    if interrupted or stopping:
                        break
            if state["position"] < n_batches:  # stopped mid-epoch; the checkpoint above resumes exactly
                if interrupted:
                    raise _interrupted(stop, state["step"], run_dir)
                if ctx.is_master:
                    print(f"vaekit: time budget of {t.max_minutes:g} minutes used up after step {state['step']} "
                          f"(epoch {epoch + 1}, batch {state['position']}/{n_batches}); checkpoint saved", file=sys.stderr)
                break
            _end_epoch(config, model, optimizer, state, sums, time.perf_counter() - started, val_images, data, run_dir, ctx, device, tb)
            if interrupted:  # the signal came on an epoch's last step: its checkpoint is the one above
                raise _interrupted(stop, state["step"], run_dir)
            if stopping:  # the budget ran out on the epoch's last step
                break
    if tb:
        tb.close()
    return run_dir


def _model_to_train(config: RunConfig, given: VAE | None, run_dir: Path, resuming: bool) -> VAE:
    """A new VAE for config.model, or the caller's one checked against it."""
    if given is None:
        where = f"resume={str(run_dir)!r}" if resuming else "out=..."
        check_networks_given(config.model, None, None, what=f"the config of {run_dir}" if resuming else "the config",
                             how=f"vaekit.train(config, model=vaekit.VAE(config.model, encoder=..., decoder=...), {where})")
        return VAE(config.model)
    if not isinstance(given, VAE):
        raise VaekitError(f"model= must be a vaekit.VAE, got {type(given).__name__}; wrap your networks: VAE(config.model, encoder=..., decoder=...)")
    for f in dataclasses.fields(config.model):
        if f.name in ("custom_encoder", "custom_decoder"):
            continue
        wanted, built = getattr(config.model, f.name), getattr(given.config, f.name)
        if wanted != built:
            raise VaekitError(f"model= was built with {f.name}={built!r} but the config (and its data) has {wanted!r}; "
                              "build the VAE from this config.model")
    config.model = given.config  # config.json records the user's networks' class names
    return given


CUDA_CHECK_EVERY = 25  # steps between host syncs on a GPU; on a CPU a sync is free and every step is checked


def check_every(device: torch.device, detect_anomaly: bool) -> int:
    """Steps between the host syncs that settle StepChecks (anomaly detection needs every step)."""
    return 1 if device.type != "cuda" or detect_anomaly else CUDA_CHECK_EVERY


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Adam:
    """Adam, fused: one kernel for all parameters, and it skips a step whose `found_inf` is set
    without the host looking at it (what lets a GPU step run without a sync)."""
    return torch.optim.Adam(model.parameters(), lr=lr, fused=True)


def non_finite_flags(terms: Terms, grad_norm: torch.Tensor) -> torch.Tensor:
    """(3,) float on the device: 1 where the reconstruction, the KL or the gradient is not finite."""
    return torch.stack([~torch.isfinite(terms.recon).all(), ~torch.isfinite(terms.kl).all(), ~torch.isfinite(grad_norm)]).float()


def _step(net, model: VAE, optimizer, x: torch.Tensor, kl_w: float, t, ctx: DistContext, device: torch.device,
          run_dir: Path, step: int, checks: "StepChecks") -> tuple[Terms, torch.Tensor]:
    """One optimizer step on batch x, with no host sync: a non-finite loss or gradient on any
    rank makes every rank skip the update on the device, and `checks` reports it later."""
    terms = net(x, iw_samples=t.iw_samples, estimator=t.mixture_estimator)
    loss = training_loss(terms, kl_w, t.free_bits)
    optimizer.zero_grad(set_to_none=True)
    anomaly = _backward(loss, t.detect_anomaly)  # only under --detect-anomaly, where every step is settled
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip or math.inf)
    bad = non_finite_flags(terms, grad_norm)
    if anomaly is not None:
        bad[2] = 1.0
    bad = ctx.all_reduce_max(bad)  # every rank skips the same steps
    optimizer.found_inf = bad.amax()  # read by the fused Adam: 1 leaves weights and moments as they were
    optimizer.step()
    checks.record(step, bad, anomaly)
    return terms, loss


def _end_epoch(config: RunConfig, model: VAE, optimizer, state: dict, sums: torch.Tensor, seconds: float, val_images: torch.Tensor,
               data: DatasetSplits, run_dir: Path, ctx: DistContext, device: torch.device, tb) -> None:
    """Validation, the metrics row, the checkpoint (and `best` pointer) and the pictures."""
    t, epoch = config.train, state["epoch"]
    totals = ctx.all_reduce_sum(sums.clone()).tolist()
    ctx.sync_buffers(model)  # evaluate and save rank 0's BatchNorm statistics on every rank
    val = bound_means(model, val_images, 256, config.data.binarize, VALIDATION_SEED, ctx)
    row = {
        "epoch": epoch + 1, "step": state["step"], "objective": t.objective_name,  # what train_elbo holds
        "train_elbo": totals[0] / totals[4], "train_recon": totals[1] / totals[4], "train_kl": totals[2] / totals[4],
        "train_loss": totals[3] / totals[4],
        "val_elbo": val["elbo"], "val_recon": val["recon"], "val_kl": val["kl"],
        "seconds": seconds, "images_per_s": totals[4] / seconds,
    }
    if config.model.components > 1:  # is the mixture collapsing? (the report plots these over epochs)
        x_val = binarize_fixed(val_images, VALIDATION_SEED) if config.data.binarize else to_float(val_images)
        usage = component_usage(posterior_weights(model, x_val))
        row.update({k: usage[k] for k in USAGE_COLUMNS})
    state["history"].append(row)
    is_best = state["best_val_elbo"] is None or val["elbo"] > state["best_val_elbo"]
    if is_best:
        state["best_val_elbo"] = val["elbo"]
    state.update(epoch=epoch + 1, position=0, sums=None, seconds=0.0)
    if not ctx.is_master:
        _save(run_dir, model, optimizer, state, ctx, device)  # joins the RNG gather
        return
    write_metrics(run_dir, state["history"])
    _save(run_dir, model, optimizer, state, ctx, device, best=is_best)
    _refresh_pictures(run_dir, model, data, device)
    if tb:
        tb.epoch(epoch + 1, model, data, row)
    print(
        f"epoch {epoch + 1}/{t.epochs}  train {row['objective']} {row['train_elbo']:.2f}  "
        f"val elbo {val['elbo']:.2f} (recon {val['recon']:.2f}, kl {val['kl']:.2f})  "
        f"{seconds:.1f}s  {row['images_per_s']:.0f} img/s",
        file=sys.stderr,
    )


def _interrupted(stop: "_SignalFlag", step: int, run_dir: Path) -> TrainingInterrupted:
    code = 143 if stop.signum == signal.SIGTERM else 130  # 128 + the signal, as shells report it
    return TrainingInterrupted(code, f"vaekit: interrupted after step {step}; checkpoint saved; continue with `vaekit train --resume {run_dir}`")


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


class StepChecks:
    """Non-finite terms, signals and the time budget, brought to the host every `every` steps.

    `record` keeps each step's non-finite flags on the device (the first bad step and which
    terms); `settle` is the one host sync: a single all-reduce of every rank's flags, so all
    ranks stop at the same step. A step found bad was already skipped by the optimizer.
    """

    def __init__(self, every: int, device: torch.device) -> None:
        self.every = every
        self.first_bad = torch.tensor([-1.0, 0.0, 0.0, 0.0], dtype=torch.float64, device=device)  # step; recon, kl, gradient bad
        self.anomaly: str | None = None  # what --detect-anomaly named (host side: it came from an exception)

    def record(self, step: int, bad: torch.Tensor, anomaly: str | None = None) -> None:
        self.anomaly = self.anomaly or anomaly
        first = (self.first_bad[0] < 0) & (bad.amax() > 0)
        self.first_bad = torch.where(first, torch.cat([torch.full((1,), float(step), dtype=torch.float64, device=bad.device), bad.double()]), self.first_bad)

    def settle(self, stop_flags: list[bool], ctx: DistContext, error) -> tuple[bool, bool]:
        """(interrupted, out of time) on any rank; raises error(step, recon, kl) for a bad step."""
        step, recon, kl, grad, *stops = ctx.any_of([self.first_bad[0] >= 0, *self.first_bad[1:], *stop_flags], self.first_bad.device)
        if step:
            raise error(int(self.first_bad[0].item()), recon, kl)
        return stops[0], stops[1]


def _non_finite(model, x, t, ctx: DistContext, device, run_dir: Path, step: int, bad_recon: bool, bad_kl: bool, anomaly: str | None) -> VaekitError:
    """The one-line error for a NaN/inf, naming the step and the term (reconstruction or KL).

    x is the step's batch, or None when the bad step was found some steps later (on a GPU) and
    its batch is gone; a gradient-only fault then cannot be traced to a term.
    """
    what = "loss"
    if not (bad_recon or bad_kl) and x is None:
        what = "gradient"
    elif not (bad_recon or bad_kl):
        # The loss was finite but a gradient was not: re-run the forward and differentiate each
        # term alone (autograd.grad, so DDP's gradient hooks stay out of it).
        what = "gradient"
        params = [p for p in model.parameters() if p.requires_grad]
        with torch.autograd.set_detect_anomaly(False):
            terms = model(x, iw_samples=t.iw_samples, estimator=t.mixture_estimator)
            flags = []
            for term in (-terms.recon.mean(), terms.kl.mean()):
                grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
                flags.append(any(g is not None and not torch.isfinite(g).all() for g in grads))
        bad_recon, bad_kl = ctx.any_of(flags, device)
    term = " and ".join(name for name, bad in (("reconstruction", bad_recon), ("KL", bad_kl)) if bad)
    if has_checkpoint(run_dir):
        kept = f"the last good checkpoint ({resolve_pointer(run_dir / 'checkpoints', 'latest').name}) is kept in {run_dir}"
    else:
        kept = "no checkpoint had been written yet"
    detail = f" ({anomaly})" if anomaly else ""
    return VaekitError(
        f"non-finite {what} at step {step}{f' in the {term} term' if term else ''}{detail}; {kept}; "
        "try a lower --lr or --grad-clip 1.0, and --detect-anomaly to find the operation"
    )


def _restore(run_dir: Path, model, optimizer, state: dict, ctx: DistContext, device: torch.device) -> None:
    """Model, optimizer, counters and this rank's RNG state from the latest checkpoint."""
    ckpt = load_checkpoint(run_dir, "latest", with_training=True)
    check_state_dict(model.state_dict(), ckpt.model, ckpt.path / "model.safetensors")
    training, where = ckpt.training, ckpt.path / "training_state.pt"
    missing = sorted(set(state) - set(ckpt.state)) + [k for k in ("optimizer", "rng") if not isinstance(training, dict) or k not in training]
    if missing:
        raise VaekitError(f"{ckpt.path} lacks {', '.join(missing)}; it cannot be resumed exactly, start a new run")
    model.load_state_dict(ckpt.model)
    try:
        optimizer.load_state_dict(training["optimizer"])
        _keep_fused(optimizer)
        rngs = training["rng"]
        torch.set_rng_state(rngs[ctx.rank] if ctx.rank < len(rngs) else rngs[0])
        if device.type == "cuda" and "cuda_rng" in training:
            torch.cuda.set_rng_state(training["cuda_rng"][min(ctx.rank, len(training["cuda_rng"]) - 1)], device)
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as exc:
        raise VaekitError(f"{where} does not fit this model ({(str(exc).splitlines() or [type(exc).__name__])[0]}); start a new run") from None
    state.update({k: ckpt.state[k] for k in state})


def _keep_fused(optimizer: torch.optim.Adam) -> None:
    """A checkpoint of a non-fused Adam (earlier vaekit) loads as non-fused, which refuses
    `found_inf`: switch it back, with the step counters where the fused kernel wants them."""
    for group in optimizer.param_groups:
        group["fused"] = True
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if "step" in state:
                state["step"] = torch.as_tensor(state["step"], dtype=torch.float32).to(p.device)


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
    try:
        save_checkpoint(run_dir, model.state_dict(), meta, training, pointers=("latest", "best") if best else ("latest",))
    except OSError as exc:  # disk full, folder removed: the previous checkpoint is still whole
        raise VaekitError(f"could not write a checkpoint in {run_dir} ({exc.strerror or exc}); the previous one is kept; free space and resume") from None


def _refresh_pictures(run_dir: Path, model: VAE, data: DatasetSplits, device: torch.device) -> None:
    from .evaluate import write_latent_pictures
    from .plots import plot_loss_curves, save_image_grid, save_reconstructions
    from .runs import read_metrics

    model.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(PICTURE_SEED)
        save_image_grid(model.sample(64).float().cpu(), run_dir / "samples.png", nrow=8)
        x = data.val.images[:32].to(device).float().div(255)
        save_reconstructions(model.crop(x).cpu(), model.reconstruct(x).float().cpu(), run_dir / "reconstructions.png")
    plot_loss_curves(read_metrics(run_dir), run_dir / "loss_curves.png")
    # Every epoch rather than only the last, so an interrupted run has them too; 2,000 images keep it cheap.
    write_latent_pictures(run_dir, model, data, device)
    model.train()


def data_parallel(model: VAE, device: torch.device) -> Callable[..., Terms]:
    """model(x, iw_samples=S, estimator=E) through DistributedDataParallel, as Terms, for an initialised process group."""
    # static_graph: with K=1 the mixture-logits head never gets a gradient, always the same set.
    ddp = torch.nn.parallel.DistributedDataParallel(_TupleTerms(model), device_ids=[device.index] if device.type == "cuda" else None, static_graph=True)
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

    def forward(self, x: torch.Tensor, iw_samples: int = 1, estimator: str = "marginal"):
        terms = self.model(x, iw_samples=iw_samples, estimator=estimator)
        return tuple(getattr(terms, f.name) for f in dataclasses.fields(terms))  # astuple would deep-copy the graph away


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


class _CallableModule(types.ModuleType):
    """`vaekit.train` names both this module and the function: importing the module (which
    `vaekit.train(...)` itself does) makes the package attribute the module, so a second
    `vaekit.train(...)` called a module. Calling the module calls train()."""

    def __call__(self, *args: Any, **kwargs: Any) -> Path:
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
