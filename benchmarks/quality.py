"""Quality benchmark: which prior, posterior and objective give the best test likelihood?

Trains, from the baseline (normal prior, K=1, ELBO), one change at a time (or with --full
every combination) of
    prior      normal | vamp          (--pseudo-inputs M for the VampPrior)
    posterior  K=1 | K=5 components
    objective  ELBO | IWAE            (--iw-samples S; stratified SIWAE when K=5)
on dynamically binarised Fashion-MNIST, each with the same wall-clock budget (--minutes; a run
stops at the first step past it), and evaluates its last weights with vaekit's evaluator on
the test set binarised once with vaekit.evaluation.evaluate.EVAL_BINARIZE_SEED:
    NLL       -log p(x) by importance sampling with q(z|x) as proposal (--nll-samples S)
    ELBO      one-sample ELBO, averaged over the test images
    FD        Fréchet distance of prior samples to the test set in the features of vaekit's
              Fashion-MNIST classifier (vaekit.evaluation.evaluate.sample_quality), when available
    AU        active units: latent dimensions whose posterior mean varies across the test
              set by more than 0.01 (Burda et al. 2015)
    epochs    training images seen / training set size
Published (binarised Fashion-MNIST, 5,000 importance samples): VAE with a Gaussian prior 228.70
nats, with the VampPrior 227.35.

Resumable: each combination writes RESULTS/quality/<name>.json and is skipped when that file
exists (a half-trained run directory is started again). `--only a,b` runs a subset. The table of
everything done so far is printed and written to RESULTS/quality.json.

    python benchmarks/quality.py --nll-samples 250 --test-subset 2000   # 4 x 20 minutes, then evaluation
    python benchmarks/quality.py --minutes 25 --epochs fit --lr-schedule cosine ...  # a cosine over the epochs that fit
    python benchmarks/quality.py --width 128 ...   # the notebook's blocks at half the channels (~3x faster)
    python benchmarks/quality.py --minutes 0.3 --nll-samples 10 --test-subset 200   # a smoke test
    python benchmarks/quality.py --mixture --width 128 --minutes 25 --epochs fit --lr-schedule cosine  # + mixtures

"vs K=1" is each row's NLL minus the baseline's, paired over the same test images (mean ± its
standard error); "used K" is exp of the entropy of the mean mixture weights on the test set.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from vaekit.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from vaekit.data import load_dataset
from vaekit.data.batching import make_batch
from vaekit.devices import resolve_device
from vaekit.evaluation.compare import paired_difference
from vaekit.evaluation.evaluate import EVAL_BINARIZE_SEED, evaluate_model
from vaekit.models.speed import training_networks
from vaekit.models.vae import VAE
from vaekit.objectives.bounds import training_loss
from vaekit.runs.run_dir import load_run
from vaekit.training.loop import train
from vaekit.training.step import make_optimizer

EVAL_SEED = 2024  # the importance samples and prior samples, the same for every combination


BASELINE = {"prior": "normal", "components": 1, "objective": "elbo"}
CHANGES = {"prior": "vamp", "components": 5, "objective": "iwae"}
# The mixture posterior decoded once per image (--mixture-estimator pathwise), with learned or equal weights.
MIXTURE = [
    {**BASELINE, "components": k, "estimator": "pathwise", "weights": w}
    for k, w in ((5, "learned"), (5, "equal"), (20, "learned"))
]


def _name(c: dict) -> str:
    estimator = "" if c.get("estimator", "marginal") == "marginal" else f"-{c['estimator']}"
    weights = "" if c.get("weights", "learned") == "learned" else f"-{c['weights']}"
    return f"{c['prior']}-k{c['components']}{estimator}{weights}-{c['objective']}"


def combinations(full: bool = False, mixture: bool = False) -> list[dict]:
    """The baseline and each change on its own (4 runs), or with `full` every combination (8);
    with `mixture` also the one-pass mixture rows (K=5 learned and equal weights, K=20)."""
    if full:
        combos = [
            {"prior": p, "components": k, "objective": o}
            for p in ("normal", "vamp")
            for k in (1, 5)
            for o in ("elbo", "iwae")
        ]
    else:
        combos = [dict(BASELINE)] + [{**BASELINE, key: value} for key, value in CHANGES.items()]
    combos += MIXTURE if mixture else []
    return [{"name": _name(c), **c} for c in combos]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--minutes", type=float, default=20.0, help="training wall-clock budget per combination (default 20)"
    )
    p.add_argument(
        "--nll-samples",
        type=int,
        default=1000,
        help="importance samples per test image (default 1000; the literature uses 5000)",
    )
    p.add_argument("--test-subset", type=int, help="evaluate only the first N test images")
    p.add_argument(
        "--train-subset",
        type=int,
        help="train on the first N training images only (smoke tests: an epoch is the budget's unit)",
    )
    p.add_argument(
        "--val-size",
        type=int,
        help="validation images held out of the 60,000 training images (default 5000; "
        "the literature trains on 50,000 and validates on 10,000: 10000)",
    )
    p.add_argument(
        "--full", action="store_true", help="all 8 combinations instead of the baseline and one change at a time"
    )
    p.add_argument("--only", help="comma-separated combination names, e.g. normal-k1-elbo,vamp-k5-iwae")
    p.add_argument(
        "--mixture", action="store_true", help="also the one-pass mixture rows: " + ", ".join(_name(c) for c in MIXTURE)
    )
    p.add_argument(
        "--iw-samples", type=int, default=5, help="S of the IWAE objective, per component when K=5 (default 5)"
    )
    p.add_argument(
        "--pseudo-inputs", type=int, default=100, help="M of the VampPrior (default 100; the paper used 500)"
    )
    p.add_argument("--latent-size", type=int, default=32)
    p.add_argument(
        "--width", type=int, default=256, help="channels of the widest conv block (default 256, the notebook's)"
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-schedule", default="constant", help="constant (default) or cosine, annealed over --epochs")
    p.add_argument(
        "--epochs",
        help="stop after this many epochs if the budget lasts that long; 'fit': as many as this "
        "combination's measured speed fits in the budget (with --lr-schedule cosine the schedule runs over them)",
    )
    p.add_argument("--seed", type=int, default=69420)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--data-dir", help="folder with the Fashion-MNIST files (default: the usual places)")
    p.add_argument(
        "--quality-samples", type=int, default=10_000, help="prior samples for the Fréchet distance (0 skips it)"
    )
    p.add_argument("--eval-batch", type=int, default=100, help="test images per importance-sampling batch")
    p.add_argument(
        "--results",
        default=str(Path(__file__).parent / "results"),
        help="folder for quality.json and the per-combination files",
    )
    args = p.parse_args(argv)
    names = [c["name"] for c in combinations(full=True, mixture=True)]
    if args.only:
        unknown = sorted(set(args.only.split(",")) - set(names))
        if unknown:
            p.error(f"unknown combination(s) {', '.join(unknown)}; choose from {', '.join(names)}")
    if args.minutes <= 0 or args.nll_samples < 1 or args.iw_samples < 2:
        p.error("--minutes must be positive, --nll-samples >= 1 and --iw-samples >= 2")
    if args.epochs not in (None, "fit") and not (args.epochs.isdigit() and int(args.epochs) > 0):
        p.error(f"--epochs must be a positive whole number or 'fit', got {args.epochs!r}")
    if args.val_size is not None and not 0 < args.val_size < 60_000:
        p.error(f"--val-size must be between 1 and 59999 of Fashion-MNIST's 60000 training images, got {args.val_size}")
    return args


def fit_epochs(config: RunConfig, data, minutes: float, steps: int = 12, seconds: float = 20.0) -> tuple[int, float]:
    """(epochs, images/s): the whole epochs this combination's training step fits in `minutes`.

    Times `steps` optimizer steps of a throwaway model on this machine now (after two warm-up
    steps; fewer, but at least 2, once `seconds` have passed), and keeps 8% of the budget for
    the per-epoch validation, pictures and checkpoints, so that a cosine schedule over the
    result reaches its end inside the budget.
    """
    t = config.train
    device = resolve_device(t.device)
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format  # as train() lays it out
    model = training_networks(VAE(config.model).to(device).to(memory_format=memory_format), device)
    optimizer = make_optimizer(model, t.lr, t.optimizer)
    images = data.train.images[: 4 * t.batch_size].to(device)

    def step() -> None:
        x = make_batch(images, torch.randint(0, len(images), (t.batch_size,), device=device), True, memory_format)
        loss = training_loss(model(x, iw_samples=t.iw_samples, estimator=t.mixture_estimator))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started, done = time.perf_counter(), 0
    while done < steps and (done < 2 or time.perf_counter() - started < seconds):
        step()
        done += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    rate = done * t.batch_size / (time.perf_counter() - started)
    return max(1, int(0.92 * minutes * 60 * rate / train_size(data, config.data.train_subset))), rate


def train_size(data, subset: int | None) -> int:
    """Training images a run sees per epoch."""
    return min(subset, len(data.train.images)) if subset else len(data.train.images)


def run_config(combo: dict, args: argparse.Namespace) -> RunConfig:
    model = ModelConfig(
        latent_size=args.latent_size,
        width=args.width,
        components=combo["components"],
        prior=combo["prior"],
        prior_components=args.pseudo_inputs,
        image_size=28,
        mixture_weights=combo.get("weights", "learned"),
    )
    data = DataConfig(
        dataset="fashion-mnist",
        data_dir=args.data_dir,
        train_subset=args.train_subset,
        val_size=args.val_size,
        binarize=True,
    )
    # Without --epochs, epochs is only a ceiling: the time budget decides when each run stops.
    train_cfg = TrainConfig(
        epochs=int(args.epochs) if args.epochs and args.epochs != "fit" else 100_000,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        seed=args.seed,
        device=args.device,
        iw_samples=args.iw_samples if combo["objective"] == "iwae" else 1,
        max_minutes=args.minutes,
        mixture_estimator=combo.get("estimator", "marginal"),
    )
    return RunConfig(model, data, train_cfg).validate()


def evaluate(model, test_images: torch.Tensor, args: argparse.Namespace) -> dict:
    """vaekit's own evaluator (BatchNorm-folded fast path) on the fixed binarisation of the test images."""
    result = evaluate_model(
        model,
        test_images,
        binarize=True,
        samples=args.nll_samples,
        batch_size=args.eval_batch,
        seed=EVAL_SEED,
        progress=False,
        fast=True,
        keep_per_image=True,
    )
    test = result["test"]
    usage = result.get("components", {})
    return {
        "per_image_nll": [float(v) for v in result["per_image"]["nll"]],
        "effective_components": math.exp(usage["entropy_of_mean_weights"]) if usage else None,
        "nll": test["nll"]["mean"],
        "nll_stderr": test["nll"]["stderr"],
        "elbo": test["elbo"]["mean"],
        "elbo_stderr": test["elbo"]["stderr"],
        "active_units": result["active_units"]["count"],
        "latent_size": result["active_units"]["of"],
        "test_images": result["images"],
    }


def frechet(model, data, args: argparse.Namespace) -> tuple[float | None, str | None]:
    """The evaluation module's Fréchet distance, or (None, why not)."""
    if args.quality_samples <= 0:
        return None, "skipped (--quality-samples 0)"
    try:
        from vaekit.evaluation.classifier import get_classifier
        from vaekit.evaluation.evaluate import sample_quality
    except ImportError as exc:
        return None, f"not available: {exc}"
    classifier = get_classifier(data, progress=False)
    quality = sample_quality(model, data, classifier, n=args.quality_samples, seed=EVAL_SEED)
    return float(quality["model_vs_test"]["frechet_distance"]), None


def run_combination(combo: dict, data, args: argparse.Namespace, results: Path) -> dict:
    run_dir = results / "quality_runs" / combo["name"]
    if run_dir.exists():  # an interrupted earlier attempt: its budget is unknown, so start over
        shutil.rmtree(run_dir)
    config = run_config(combo, args)
    fitted = None
    if args.epochs == "fit":
        config.train.epochs, rate = fit_epochs(config, data, args.minutes)
        fitted = {"epochs": config.train.epochs, "calibration_images_per_s": rate}
        print(
            f"{combo['name']}: {rate:.0f} images/s now, {config.train.epochs} epochs fit in {args.minutes:g} minutes",
            file=sys.stderr,
        )
    started = time.perf_counter()
    train(config, out=run_dir, data=data, progress=False)
    train_minutes = (time.perf_counter() - started) / 60
    # The last weights, not the best validation epoch: the budget usually ends mid-epoch, and
    # within 20 minutes the validation ELBO still rises every epoch.
    run = load_run(run_dir, "latest", device=resolve_device(args.device))
    test = data.test.images[: args.test_subset] if args.test_subset else data.test.images
    started = time.perf_counter()
    numbers = evaluate(run.model, test, args)
    fd, fd_note = frechet(run.model, data, args)
    history = run.state.get("history", [])
    train_images = train_size(data, args.train_subset)
    return {
        **combo,
        "iw_samples": config.train.iw_samples,
        **numbers,
        "frechet_distance": fd,
        **({"frechet_note": fd_note} if fd_note else {}),
        "epochs": run.state["step"] * args.batch_size / train_images,
        "full_epochs": len(history),
        "last_val_elbo": history[-1]["val_elbo"] if history else None,
        "steps": run.state.get("step"),
        "train_minutes": train_minutes,
        "eval_minutes": (time.perf_counter() - started) / 60,
        "run_dir": str(run_dir),
        **({"fitted": fitted} if fitted else {}),
    }


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def schedule_done(row: dict) -> float | None:
    """How much of a fitted schedule the run got through before its budget ended (1.0: all of it).

    The fit is a prediction from a few timed steps; on a shared machine whose speed drifts the
    budget can end a cosine early, leaving the learning rate above zero, which this makes visible.
    """
    fitted = row.get("fitted", {}).get("epochs")
    return min(1.0, row["epochs"] / fitted) if fitted else None


def paired_to_baseline(row: dict, rows: list[dict]) -> str:
    """This row's NLL minus the baseline's, mean ± standard error over the same test images."""
    base = next((r for r in rows if r["name"] == _name(BASELINE)), None)
    if (
        base is None
        or row is base
        or "per_image_nll" not in row
        or len(base.get("per_image_nll", [])) != len(row["per_image_nll"])
    ):
        return ""
    diff = paired_difference(base["per_image_nll"], row["per_image_nll"])
    return f"{diff['mean']:+.2f}±{diff['stderr']:.2f}"


def table(rows: list[dict]) -> str:
    head = (
        f"{'combination':<26} {'NLL':>14} {'vs K=1':>12} {'ELBO':>9} {'FD':>8} {'AU':>6} {'used K':>6} "
        f"{'epochs':>6} {'fit done':>8} {'train min':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        fd = "" if r.get("frechet_distance") is None else f"{r['frechet_distance']:.2f}"
        nll = f"{r['nll']:.2f}±{r['nll_stderr']:.2f}"
        done = schedule_done(r)
        used = "" if r.get("effective_components") is None else f"{r['effective_components']:.2f}"
        lines.append(
            f"{r['name']:<26} {nll:>14} {paired_to_baseline(r, rows):>12} {r['elbo']:>9.2f} {fd:>8} "
            f"{r['active_units']:>3}/{r['latent_size']:<2} {used:>6} "
            f"{r['epochs']:>6.2f} {'' if done is None else f'{done:.0%}':>8} {r['train_minutes']:>9.1f}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    results = Path(args.results)
    per_combo = results / "quality"
    per_combo.mkdir(parents=True, exist_ok=True)
    wanted = set(args.only.split(",")) if args.only else None
    data = None
    rows = []
    for combo in combinations(full=args.full or bool(args.only), mixture=args.mixture or bool(args.only)):
        path = per_combo / f"{combo['name']}.json"
        if path.is_file():
            row = json.loads(path.read_text())
            rows.append(row)
            same = row.get("settings", {}).get("minutes") == args.minutes
            print(
                f"{combo['name']}: done before, kept ({path})"
                + ("" if same else f"; NOTE: trained with --minutes {row.get('settings', {}).get('minutes')}"),
                file=sys.stderr,
            )
            continue
        if wanted is not None and combo["name"] not in wanted:
            continue
        data = data or load_dataset("fashion-mnist", args.data_dir, val_size=args.val_size)
        print(f"{combo['name']}: training for {args.minutes:g} minutes", file=sys.stderr)
        row = run_combination(combo, data, args, results)
        row["settings"] = {k: v for k, v in vars(args).items() if k not in ("only", "results")}
        path.write_text(json.dumps(row, indent=2) + "\n")
        rows.append(row)
    print(table(rows))
    summary = {
        "benchmark": "binarised Fashion-MNIST test NLL (nats), test set binarised once with seed "
        f"{EVAL_BINARIZE_SEED}, importance-sampled with q(z|x) as proposal",
        "published": {
            "vae_gaussian_prior": 228.70,
            "vae_vampprior": 227.35,
            "hvae_vampprior": 224.67,
            "importance_samples": 5000,
        },
        "machine": machine(),
        "results": rows,
    }
    (results / "quality.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
