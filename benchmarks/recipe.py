"""The 20-minute recipe search: one change at a time against the current best, paired.

    python benchmarks/recipe.py --only base,lr2e-3 [--epochs 24] [--runs DIR]
    python benchmarks/recipe.py --table            # the table of what is evaluated so far

Each variant is the baseline's `vaekit train` flags plus its own, trained for the same number of
epochs (the epochs that fill 20 minutes at this machine's speed when the search ran; see
benchmarks/README.md), then evaluated on the quick protocol: the first 2,000 Fashion-MNIST test
images, binarised with the evaluation seed, S=250 importance samples, latest weights. Variants
that change what is evaluated rather than how it trains are derived from a trained run without
training again:
    NAME:trained   the trained weights instead of the moving average (runs trained with --ema)
    NAME:bn        BatchNorm statistics re-estimated over the training set after training
(NAME:KIND evaluates the derived run only; name NAME too for the run as trained).
The table pairs every row with the first (`vaekit compare`): mean per-image NLL difference ±
its standard error over the same images, over every row kept so far. Results: RESULTS/recipe.json,
RESULTS/recipe/<variant>/ (the files each row needs) and RUNS/<variant>/ (the runs).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import save_file

# No KL warm-up in the base: every row before the third round trained without one.
BASE = ["--width", "128", "--lr-schedule", "cosine", "--val-size", "10000", "--ema", "0.999", "--kl-warmup", "0"]
VARIANTS: dict[str, list[str]] = {
    "base": [],
    "lr2e-3": ["--lr", "2e-3", "--lr-warmup", "400"],
    "batch256": ["--batch-size", "256", "--lr", "1.4e-3"],
    "vamp": ["--prior", "vamp", "--prior-components", "100"],
    "latent16": ["--latent-size", "16"],
    "seed2": ["--seed", "2"],
    "lr2e-3-seed2": ["--lr", "2e-3", "--lr-warmup", "400", "--seed", "2"],
    "vamp-lr2e-3": ["--lr", "2e-3", "--lr-warmup", "400", "--prior", "vamp", "--prior-components", "100"],
    # Half the batch at the same noise scale (lr x 1/sqrt(2)) and the same warm-up in images.
    "batch64": ["--lr", "1.4e-3", "--lr-warmup", "800", "--batch-size", "64"],
    # Gated blocks cost ~2x a plain block's FLOPs at one width: at 96 a step costs 1.3x width 128's
    # (profile_step.py), so it trains 18 epochs against 24 for the same wall clock.
    "gated96": ["--blocks", "gated", "--width", "96"],
    "gated96-seed2": ["--blocks", "gated", "--width", "96", "--seed", "2"],
    "gated96-vamp": ["--blocks", "gated", "--width", "96", "--prior", "vamp", "--prior-components", "100"],
    "latent64": ["--latent-size", "64"],
    "width96": ["--width", "96"],
}
VARIANTS["gated96-vamp-seed2"] = VARIANTS["gated96-vamp"] + ["--seed", "2"]
VARIANTS["gated96-vamp-klw2"] = VARIANTS["gated96-vamp"] + ["--kl-warmup", "2"]
VARIANTS["gated96-vamp-klw2-seed2"] = VARIANTS["gated96-vamp-klw2"] + ["--seed", "2"]
for _epochs in ("1", "4", "8"):
    VARIANTS[f"gated96-vamp-klw{_epochs}"] = VARIANTS["gated96-vamp"] + ["--kl-warmup", _epochs]
VARIANTS["gated96-vamp-klw4-lr3e-3"] = VARIANTS["gated96-vamp-klw4"] + ["--lr", "3e-3"]
VARIANTS["gated96-vamp-klw4-lr3e-3-seed2"] = VARIANTS["gated96-vamp-klw4-lr3e-3"] + ["--seed", "2"]
TEST_IMAGES, SAMPLES, EVAL_SEED = 2000, 250, 2024


def trained_epochs(run: Path) -> int:
    from vaekit.runs.checkpoint import has_checkpoint, load_checkpoint

    return load_checkpoint(run, "latest").state["epoch"] if has_checkpoint(run) else 0


def train(name: str, flags: list[str], epochs: int, runs: Path) -> Path:
    run = runs / name
    if trained_epochs(run) >= epochs:
        return run
    if run.exists():
        shutil.rmtree(run)
    vaekit = str(Path(sys.executable).parent / "vaekit")
    cmd = [vaekit, "train", *BASE, *flags, "--epochs", str(epochs), "--out", str(run)]
    print("$", shlex.join(cmd), flush=True)
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
    (run / "train_minutes.txt").write_text(f"{(time.perf_counter() - started) / 60:.2f}\n")
    return run


def derive(run: Path, kind: str) -> Path:
    """A copy of `run` whose latest checkpoint holds other weights (see the module docstring)."""
    from vaekit.evaluation.bn_stats import reestimate_batchnorm
    from vaekit.runs.checkpoint import load_checkpoint, resolve_pointer
    from vaekit.runs.run_dir import load_run, load_run_data

    out = run.parent / f"{run.name}:{kind}"
    if (out / "evaluation.json").is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("evaluation*", "*.png", "report.html"))
    folder = resolve_pointer(out / "checkpoints", "latest")
    if kind == "trained":
        weights = load_checkpoint(run, "latest", with_training=True).training["weights"]
    elif kind == "bn":
        loaded = load_run(run, "latest")
        data = load_run_data(loaded.config)
        weights = reestimate_batchnorm(loaded.model, data.train.images, loaded.config.data.binarize).state_dict()
    else:
        raise SystemExit(f"unknown derived variant {kind!r}; use trained or bn")
    save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / "model.safetensors"))
    return out


def evaluate(run: Path) -> None:
    from vaekit.evaluation.evaluate import evaluate_run

    if not (run / "evaluation.json").is_file():
        evaluate_run(
            run,
            samples=SAMPLES,
            test_subset=TEST_IMAGES,
            batch_size=100,
            quality=False,
            seed=EVAL_SEED,
            progress=False,
            checkpoint="latest",
        )


def keep(run: Path, folder: Path) -> None:
    """The files a row of the table needs (settings, evaluation, per-image NLLs), under RESULTS/recipe/."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "evaluation.json", "evaluation_per_image.npz", "metrics.csv", "train_minutes.txt"):
        if (run / name).is_file():
            shutil.copy2(run / name, folder / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="variants to run, comma-separated (NAME or NAME:trained|bn)")
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--runs", default="recipe-runs")
    parser.add_argument("--results", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--first", default="base", help="the row every other is paired with")
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    runs, kept = Path(args.runs), Path(args.results) / "recipe"
    for name in filter(None, args.only.split(",")):
        base_name, _, kind = name.partition(":")
        if base_name not in VARIANTS:
            raise SystemExit(f"unknown variant {base_name!r}; known: {', '.join(VARIANTS)}")
        run = train(base_name, VARIANTS[base_name], args.epochs, runs)
        evaluated = derive(run, kind) if kind else run
        evaluate(evaluated)
        keep(evaluated, kept / name.replace(":", "_"))
    from vaekit.evaluation.compare import compare_runs, format_comparison

    # Every row ever evaluated, from the kept files: runs trained in other sessions or folders pair too.
    first = args.first.replace(":", "_")
    done = sorted(
        (p for p in kept.iterdir() if (p / "evaluation.json").is_file()), key=lambda p: (p.name != first, p.name)
    )
    if len(done) >= 2:
        result = compare_runs(done)
        for row in result["runs"]:
            minutes = Path(row["run"]) / "train_minutes.txt"
            row["train_minutes"] = float(minutes.read_text()) if minutes.is_file() else None
            name = Path(row["run"]).name
            # The flags as they read now; config.json beside the row holds every setting it trained with
            # (defaults have moved since the first rows).
            row["flags"] = BASE + VARIANTS.get(name.partition("_")[0], [])
            row["epochs"] = json.loads((Path(row["run"]) / "config.json").read_text())["train"]["epochs"]
        print(format_comparison(result))
        out = Path(args.results) / "recipe.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
